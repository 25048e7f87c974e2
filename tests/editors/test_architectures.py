"""The architecture table on tiny randomly initialised models (no download): GPT-2 (Conv1D) and the
Llama family (nn.Linear down_proj) resolve with the right layout, ROME's update lands exactly, and
unknown architectures / bad layers / malformed requests fail before any weight changes."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from prune_fast.editors import (CovarianceStore, Layout, MEMITHyperParams, ROMEHyperParams, compute_memit,
                                compute_rome, resolve_site)
from prune_fast.lm.requests import EditRequest
from prune_fast.errors import InvalidLayerError, MalformedRequestError, UnsupportedArchitectureError
from prune_fast.updates import TrackerSet
from prune_fast.testbed import World, WorldSpec, WordTokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = World.generate(WorldSpec(n_subjects=20, n_relations=3, seed=3))
TOK = WordTokenizer(WORLD.vocabulary())


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=len(TOK), n_positions=32, n_embd=32, n_layer=3, n_head=2,
                                  n_inner=64, pad_token_id=0, bos_token_id=2, eos_token_id=2)
    return transformers.GPT2LMHeadModel(cfg)


def _llama_like(kind):
    common = dict(vocab_size=len(TOK), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  pad_token_id=0, bos_token_id=2, eos_token_id=2)
    cfg = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config}[kind](**common)
    return transformers.AutoModelForCausalLM.from_config(cfg)


FAMILIES = {
    "gpt2": (_gpt2, "transformer.h.{}.mlp.c_proj", Layout.IN_OUT),
    "llama": (lambda: _llama_like("llama"), "model.layers.{}.mlp.down_proj", Layout.OUT_IN),
    "mistral": (lambda: _llama_like("mistral"), "model.layers.{}.mlp.down_proj", Layout.OUT_IN),
    "qwen2": (lambda: _llama_like("qwen2"), "model.layers.{}.mlp.down_proj", Layout.OUT_IN),
}


def _model(family):
    torch.manual_seed(0)
    model = FAMILIES[family][0]()
    model.eval()
    return model


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), f"{k} changed"


def _store(tmp_path):
    return CovarianceStore(WORLD.corpus(200), cache_dir=tmp_path, progress=False)


def _rome_hp(**kw):
    kw = {"layer": 1, "site": "subject_last", "v_steps": 5, "cov_samples": 200, **kw}
    return ROMEHyperParams(**kw)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_site_layout_detected(family):
    model = _model(family)
    _, template, layout = FAMILIES[family]
    site = resolve_site(model, 2)
    assert site.module_name == template.format(2)
    assert site.layout is layout
    w = model.get_submodule(site.module_name).weight
    expected = (site.d_in, site.d_out) if layout is Layout.IN_OUT else (site.d_out, site.d_in)
    assert tuple(w.shape) == expected
    assert site.d_out == model.config.hidden_size


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("site_kind", ["subject_last", "prompt_last"])
def test_rome_update_maps_key_to_value(family, site_kind, tmp_path):
    model = _model(family)
    req = WORLD.edit_requests(1, seed=5)[0]
    res = compute_rome(model, TOK, req, _rome_hp(site=site_kind), _store(tmp_path))
    (upd,) = res.updates
    weight = model.get_submodule(res.site.module_name).weight
    assert upd.u.shape[0] == weight.shape[0] and upd.v.shape[0] == weight.shape[1] and upd.rank == 1
    TrackerSet(model, restrain_every=None).apply_(res.updates)
    module = model.get_submodule(res.site.module_name)
    with torch.no_grad():
        out = module(res.key[None].to(weight.dtype))[0]
    err = ((out - res.value).norm() / res.value.norm()).item()
    assert err < 1e-4, f"{family}/{site_kind}: |W_new k* + b - v*| / |v*| = {err:.2e}"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_memit_runs_and_changes_only_its_layers(family, tmp_path):
    model = _model(family)
    snap = _snapshot(model)
    reqs = WORLD.edit_requests(3, seed=6)
    hp = MEMITHyperParams(layers=(0, 1), site="prompt_last", v_steps=5, cov_samples=200, mom2_update_weight=10.0)
    res = compute_memit(model, TOK, reqs, hp, _store(tmp_path))
    _assert_unchanged(model, snap)  # computing writes nothing
    assert [u.layer for u in res.updates] == [0, 1] and all(u.rank == 3 for u in res.updates)
    TrackerSet(model, restrain_every=None).apply_(res.updates)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, snap[k])}
    assert changed == {u.param_name for u in res.updates}


def test_unknown_architecture_is_refused(tmp_path):
    cfg = transformers.GPTNeoXConfig(vocab_size=len(TOK), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    snap = _snapshot(model)
    req = WORLD.edit_requests(1)[0]
    with pytest.raises(UnsupportedArchitectureError, match="gpt_neox"):
        compute_rome(model, TOK, req, _rome_hp(), _store(tmp_path))
    with pytest.raises(UnsupportedArchitectureError, match="gpt_neox"):
        compute_memit(model, TOK, [req], MEMITHyperParams(layers=(0,)), _store(tmp_path))
    _assert_unchanged(model, snap)


def test_explicit_templates_edit_an_unlisted_architecture(tmp_path):
    cfg = transformers.GPTNeoXConfig(vocab_size=len(TOK), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    hp = _rome_hp(mlp_out_template="gpt_neox.layers.{}.mlp.dense_4h_to_h", layer_template="gpt_neox.layers.{}")
    res = compute_rome(model, TOK, WORLD.edit_requests(1)[0], hp, _store(tmp_path))
    assert res.site.layout is Layout.OUT_IN


@pytest.mark.parametrize("layer", [-1, 3, 100, 1.0, True], ids=["neg", "n_layers", "far", "float", "bool"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bad_layer_is_refused(family, layer, tmp_path):
    model = _model(family)
    snap = _snapshot(model)
    req = WORLD.edit_requests(1)[0]
    with pytest.raises(InvalidLayerError, match="out of range"):
        compute_rome(model, TOK, req, _rome_hp(layer=layer), _store(tmp_path))
    with pytest.raises(InvalidLayerError, match="out of range"):
        compute_memit(model, TOK, [req], MEMITHyperParams(layers=(0, layer) if layer != -1 else (layer,)),
                      _store(tmp_path))
    _assert_unchanged(model, snap)


def test_wrong_template_is_refused(tmp_path):
    model = _model("gpt2")
    snap = _snapshot(model)
    with pytest.raises(InvalidLayerError, match="no module"):
        compute_rome(model, TOK, WORLD.edit_requests(1)[0], _rome_hp(mlp_out_template="transformer.h.{}.mlp.nope"),
                     _store(tmp_path))
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_malformed_request_is_refused(family, tmp_path):
    model = _model(family)
    snap = _snapshot(model)
    good = WORLD.edit_requests(2)
    with pytest.raises(MalformedRequestError):
        compute_rome(model, TOK, {"prompt": "{} lives in", "subject": "x"}, _rome_hp(), _store(tmp_path))
    with pytest.raises(MalformedRequestError, match="EditRequest"):
        compute_memit(model, TOK, [good[0], "not a request", good[1]], MEMITHyperParams(layers=(0,)), _store(tmp_path))
    with pytest.raises(MalformedRequestError, match="target_new"):
        compute_memit(model, TOK, [good[0], EditRequest("{} lives in", "x", "")], MEMITHyperParams(layers=(0,)),
                      _store(tmp_path))
    _assert_unchanged(model, snap)


def test_covariance_is_cached_per_model_and_layer(tmp_path):
    a, b = _model("gpt2"), _model("gpt2")
    torch.manual_seed(1)
    with torch.no_grad():
        b.get_input_embeddings().weight.normal_()
    store = _store(tmp_path)
    site0, site1 = resolve_site(a, 0), resolve_site(a, 1)
    c_a0 = store.get(a, TOK, site0, 100)
    c_a1 = store.get(a, TOK, site1, 100)
    c_b0 = store.get(b, TOK, site0, 100)
    assert not torch.equal(c_a0, c_a1) and not torch.equal(c_a0, c_b0)
    files = sorted(p.name for p in (tmp_path / "covariance").rglob("*.safetensors"))
    assert len(files) == 3, files
    again = CovarianceStore(WORLD.corpus(200), cache_dir=tmp_path, progress=False).get(a, TOK, site0, 100)
    assert torch.equal(again, c_a0)
    # symmetric positive semi-definite, and equal to the mean outer product of the keys
    assert torch.allclose(c_a0, c_a0.T) and torch.linalg.eigvalsh(c_a0.double()).min() > -1e-6


@pytest.mark.parametrize("cls", [ROMEHyperParams, MEMITHyperParams])
@pytest.mark.parametrize("preset", ["gpt2", "llama", "testbed"])
def test_hparams_yaml_roundtrip(cls, preset, tmp_path):
    hp = cls.preset(preset)
    assert cls.from_yaml(hp.to_yaml()) == hp
    hp.to_yaml(tmp_path / "hp.yaml")
    assert cls.from_yaml(tmp_path / "hp.yaml") == hp
    assert cls.from_yaml(str(tmp_path / "hp.yaml")) == hp


def test_hparams_reject_unknown_and_bad_fields():
    with pytest.raises(ValueError, match="unknown ROMEHyperParams field.*'layr'"):
        ROMEHyperParams.from_yaml("layr: 3\n")
    with pytest.raises(ValueError, match="site"):
        ROMEHyperParams.from_yaml("layer: 3\nsite: subject_first\n")
    with pytest.raises(ValueError, match="strictly increasing"):
        MEMITHyperParams.from_yaml("layers: [3, 2]\n")
    with pytest.raises(ValueError, match="mapping"):
        ROMEHyperParams.from_yaml("- 1\n- 2\n")


@pytest.mark.parametrize("family, rome_layer, memit_layers", [
    ("gpt2", 1, (1,)), ("llama", 0, (0, 1)),
])
def test_presets_follow_the_model_depth(family, rome_layer, memit_layers):
    model = _model(family)
    assert ROMEHyperParams.for_model(model).layer == rome_layer
    assert MEMITHyperParams.for_model(model).layers == memit_layers
    assert ROMEHyperParams.preset("gpt2").layer == 17  # GPT-2 XL, as in the ROME paper
    assert MEMITHyperParams.preset("gpt2").layers == (13, 14, 15, 16, 17)


def test_covariance_is_the_mean_outer_product_of_keys(tmp_path):
    model = _model("llama")
    site = resolve_site(model, 1)
    texts = WORLD.corpus(30)
    store = CovarianceStore(texts, cache_dir=None, batch_size=7, progress=False)
    cov = store.get(model, TOK, site, n_samples=30)
    keys = []
    module = model.get_submodule(site.module_name)
    handle = module.register_forward_pre_hook(lambda _m, args: keys.append(args[0][0].double()))
    with torch.no_grad():
        for t in texts:  # one text at a time: no padding at all
            model(input_ids=torch.tensor([TOK.encode(t)]))
    handle.remove()
    k = torch.cat(keys)
    ref = k.T @ k / k.shape[0]
    err = ((cov.double() - ref).norm() / ref.norm()).item()
    assert err < 1e-5, f"relative error {err:.2e} against {k.shape[0]} unpadded keys"


def test_tracker_set_checks_every_update_before_writing():
    from prune_fast.errors import EditorError
    from prune_fast.updates import FactoredUpdate

    model = _model("gpt2")
    snap = _snapshot(model)
    site = resolve_site(model, 0)
    rows, cols = model.get_submodule(site.module_name).weight.shape
    good = FactoredUpdate(site.param_name, torch.randn(rows, 1), torch.randn(cols, 1), 0)
    bad_cases = {
        "name": FactoredUpdate("transformer.h.0.mlp.nope.weight", good.u, good.v),
        "shape": FactoredUpdate(site.param_name, torch.randn(cols, 1), torch.randn(rows, 1)),
        "rank": FactoredUpdate(site.param_name, torch.randn(rows, 2), torch.randn(cols, 1)),
        "nan": FactoredUpdate(site.param_name, torch.full((rows, 1), float("nan")), good.v),
        "vector": FactoredUpdate("transformer.h.0.mlp.c_proj.bias", torch.randn(cols, 1), torch.randn(1, 1)),
    }
    trackers = TrackerSet(model, restrain_every=None)
    for what, bad in bad_cases.items():
        with pytest.raises(EditorError):
            trackers.apply_([good, bad])
        _assert_unchanged(model, snap)
    trackers.apply_([good])
    w = model.get_submodule(site.module_name).weight.detach()
    assert torch.allclose(w, snap[site.param_name] + good.u @ good.v.T, atol=1e-5)
