"""``python -m prune_fast stats``: one process, and two processes under torchrun over gloo, give the
same key statistics (and the straightforward float64 ones) in the shared cache."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

from prune_fast.testbed import World, WorldSpec, WordTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORLD = World.generate(WorldSpec(n_subjects=20, n_relations=3, seed=3))


def _run(args, cache):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PRUNE_FAST_CACHE=str(cache), OMP_NUM_THREADS="1")
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_two_gloo_processes_give_the_single_process_statistics(tmp_path, rng):
    tok = WordTokenizer(WORLD.vocabulary())
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   pad_token_id=0, bos_token_id=2, eos_token_id=2)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save(folder / "tokenizer.json")
    words = WORLD.vocabulary()
    lines = [" ".join(words[int(i)] for i in torch.randint(5, len(words), (int(n),), generator=rng))
             for n in torch.randint(1, 40, (45,), generator=rng)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    common = ["--model", str(folder), "--corpus", str(tmp_path / "corpus.txt"), "--layers", "1", "2",
              "--samples", "40", "--token-budget", "64", "--no-progress", "--threads", "1"]
    _run([sys.executable, "-m", "prune_fast", "stats", *common], tmp_path / "one")
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
          f"--master_port={port}",
          "-m", "prune_fast", "stats", *common], tmp_path / "two")
    one = sorted((tmp_path / "one" / "covariance").rglob("*.safetensors"))
    two = sorted((tmp_path / "two" / "covariance").rglob("*.safetensors"))
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 2, (one, two)
    assert not list((tmp_path / "two").rglob("partial-*")) and not list((tmp_path / "two").rglob("*.tmp"))
    # the straightforward float64 statistics, one text at a time
    keys = {1: [], 2: []}
    hooks = [model.model.layers[i].mlp.down_proj.register_forward_pre_hook(
        lambda _m, a, i=i: keys[i].append(a[0][0].double())) for i in keys]
    with torch.no_grad():
        for t in lines[:40]:
            model(input_ids=torch.tensor([tok.encode(t)[:128]]))
    for h in hooks:
        h.remove()
    for a, b in zip(one, two):
        layer = 1 if ".layers.1." in a.name else 2
        k = torch.cat(keys[layer])
        ref = k.T @ k / k.shape[0]
        ca, cb = load_file(str(a))["mom2"].double(), load_file(str(b))["mom2"].double()
        for c in (ca, cb):
            err = ((c - ref).norm() / ref.norm()).item()
            assert err <= 1e-6, f"{a.name}: relative error {err:.2e}"
        assert ((ca - cb).norm() / ca.norm()).item() <= 1e-6
