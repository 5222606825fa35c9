"""Action parser: assistant text -> {device: {parameter: value}} in the schema of DATA.md.

Rule-based and deterministic, so that a prediction and its reference are read the same way.

How a text is read
1. Normalise: lower case, plain apostrophes, spelled-out numbers to digits ("twenty-two" ->
   22; "one" only where it is clearly a value: "speed one", "to one"), "percent" -> "%",
   "22°C" / "22 C" -> "22 degrees", "HDMI 1" / "hdmi one" -> "hdmi1", "A/C" -> "ac".
2. Split into sentences, and cut away what is only offered or asked: everything from the
   first offer or question phrase of a sentence ("would you like", "shall I", "let me know",
   "if you", "I can", ...) is dropped; a sentence that ends in "?" without such a phrase
   loses its last clause ("The AC is at 22, is that okay?" keeps the first clause).
3. Split the rest into clauses (commas, semicolons, dashes, "so", "because", "while", ...)
   and drop clauses that are negated ("not 24", "I haven't touched the TV").
4. Lex each clause into devices, parameter words, values (numbers with %/degrees, fan
   levels, categorical words, armed/disarmed, on/off) and read it left to right:
   - the *current device* is the last one named (carried across "with"/"and", clauses and
     sentences); a parameter word unique to one device (temperature, fan, equalizer, input,
     colour, alarm) names that device too;
   - a number goes to the parameter word before it ("volume to 30", "fan speed 2"), else to
     the one right after it ("40% brightness"), else to the current device's main
     parameter (lights -> brightness, speaker/TV -> volume, AC -> temperature,
     security -> alarm volume); "degrees" always means the AC temperature;
   - ambiguous words are decided by the device named: "brightness" is the TV's when the
     TV is the current device, else the lights'; "cool" is the AC mode with the AC and the
     light colour with the lights; "volume" is the alarm volume with the security system;
     a parameter word whose device is not yet known waits for a device later in the clause
     ("the volume to 20 on the TV"), else takes the last device named that has it, else
     the lights for "brightness" and the TV for "volume" (the more often mentioned);
   - numbers that are times, durations, differences or starting points ("7 pm", "10
     minutes", "by 2", "from 20 to 25") are ignored.
5. Values outside the schema's range are dropped, not clipped: a clipped value would be a
   setting the text never stated. The last valid value stated for a parameter wins.

Only devices with at least one parsed parameter appear: "I've turned on the TV" sets no
parameter of the schema and parses to {}.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from personal.data.schema import DEVICES, BoolParam, ChoiceParam, IntParam

Actions = dict[str, dict[str, Any]]

# --- 1) Normalisation ----------------------------------------------------------------------

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split())}

_REWRITES: list[tuple[str, str]] = [
    (r"[\u2019\u2018`]", "'"),
    (r"\ba\s*/\s*c\b|\ba\.c\.(?=\s|$)|\ba\.c\b", "ac"),
    (r"\bt\.v\.(?=\s|$)|\bt\.v\b", "tv"),
    (r"\bper\s*cent\b|\bpercent(age)?\b|\bpct\b", "%"),
    (r"\bhdmi[\s-]*(?:1|one)\b", "hdmi1"),
    (r"\bhdmi[\s-]*(?:2|two)\b", "hdmi2"),
    (r"\byou[\s-]tube\b", "youtube"),
    (r"\b(?:a|one)\s+hundred\b|\bhundred\b", "100"),
    (r"(\d)\s*(?:°|º)\s*(?:c|f|celsius|fahrenheit)?\b|(\d)\s*(?:°|º)", r"\1\2 degrees"),
    (r"\b(\d+)\s*(?:c|celsius)\b", r"\1 degrees"),
    (r"\bdegrees?\s+(?:celsius|centigrade|c)\b", "degrees"),
]


def _spelled_numbers(text: str) -> str:
    def tens(m: re.Match) -> str:
        return str(_TENS[m.group(1)] + (_UNITS[m.group(2)] if m.group(2) else 0))

    units = "|".join(w for w in _UNITS if w != "one")
    text = re.sub(r"\b(" + "|".join(_TENS) + r")(?:[\s-](" + units + r"|one))?\b", tens, text)
    text = re.sub(r"\b(" + units + r")\b", lambda m: str(_UNITS[m.group(1)]), text)
    # "one" is mostly a pronoun ("this one"); read it as 1 only where it is a value.
    text = re.sub(r"\b(speed|level|to|at|on)\s+one\b(?!\s+(?:of|more|last|thing|moment|sec))",
                  r"\1 1", text)
    return re.sub(r"\bone(?=\s*(?:%|degrees?\b))", "1", text)


def normalize(text: str) -> str:
    """Lower-cased text with aliases, units and spelled-out numbers rewritten (step 1)."""
    text = text.lower()
    for pattern, repl in _REWRITES:
        text = re.sub(pattern, repl, text)
    return _spelled_numbers(text)


# --- 2) and 3) Statements: sentences and clauses that set something -----------------------

_OFFER = re.compile(
    r"\b(?:would you|wouldn't you|could you|can you|do you|did you|are you|will you"
    r"|shall i|should i|shall we|should we|want me to|would it|can i|could i|may i|might i"
    r"|how about|what about|let me know|feel free|if you|if it|if that|in case|unless"
    r"|i can|i could|i'd be happy|i would be happy|happy to|just say|just ask|just tell"
    r"|whenever you|any ?time you|or would|or should|or shall|or do|is that|is this"
    r"|does that|how does|how do|what do|what would|prefer)\b")
_ASKING = re.compile(r"(?:^|[,;:]\s*|\b(?:and|or|but)\s+)(?:is|are|do|does|did|would|could|can"
                     r"|shall|should|will|how|what|which|may|want|any|anything|maybe|perhaps"
                     r"|ready|sound|sounds)\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+|(?<=[!?])(?=\S)")
_CLAUSE_SPLIT = re.compile(
    r"\s*[,;:()]\s*|\s+[-\u2013\u2014]+\s+|[\u2013\u2014]"
    r"|\s+(?=(?:so that|so|because|since|while|but|although|though|whereas|which|then"
    r"|to keep|to make|to help)\b)")
_NEGATION = re.compile(r"n't\b|\b(?:not|never|no longer|cannot|nothing)\b")


def _statement_part(sentence: str) -> str:
    """The part of a sentence that states what was done (offers and questions cut away)."""
    cut = len(sentence)
    m = _OFFER.search(sentence)
    if m:
        cut = m.start()
    if sentence.rstrip().endswith("?"):
        m = _ASKING.search(sentence)
        if m and m.start() < cut:
            cut = m.start()
        if cut == len(sentence):  # a question with no asking phrase: drop its last clause
            parts = [p for p in _CLAUSE_SPLIT.finditer(sentence)]
            cut = parts[-1].start() if parts else 0
    return sentence[:cut]


def statement_clauses(text: str) -> list[list[str]]:
    """Normalised sentences, each a list of the clauses that state settings (steps 1-3)."""
    out = []
    for sentence in _SENTENCE_END.split(normalize(text)):
        kept = _statement_part(sentence.strip())
        clauses = [c.strip(" .!?") for c in _CLAUSE_SPLIT.split(kept) if c and c.strip(" .!?")]
        clauses = [c for c in clauses if not _NEGATION.search(c)]
        if clauses:
            out.append(clauses)
    return out


# --- 4) Lexing ------------------------------------------------------------------------------

#: Parameter words and the devices that have them ("volume" on the security system is its
#: alarm volume).
_PARAM_DEVICES = {
    "volume": ("tv", "speaker", "security"), "brightness": ("tv", "lights"),
    "mode": ("ac", "lights"), "temperature": ("ac",), "fan_speed": ("ac",),
    "input_source": ("tv",), "color": ("lights",), "equalizer": ("speaker",),
    "alarm_volume": ("security",), "armed": ("security",),
}
#: The parameter a bare number sets on each device.
_MAIN_PARAM = {"lights": "brightness", "speaker": "volume", "tv": "volume",
               "ac": "temperature", "security": "alarm_volume"}
#: Where "brightness" / "volume" go when no device that has them is named at all.
_DEFAULT_DEVICE = {"brightness": "lights", "volume": "tv"}
_FAN_LEVELS = {"low": 1, "medium": 2, "mid": 2, "high": 3}
_COLOR_WORDS = r"white|tones?|toned|colou?r(?:ed|s)?|light(?:ing)?|glow|hues?|shades?|settings?"


@dataclass
class Token:
    """One lexed unit of a clause; `value` depends on `kind`."""

    kind: str  # dev | param | num | level | cat | switch | skip
    value: Any
    start: int
    end: int
    unit: Optional[str] = None  # num: "%", "deg" or None
    strong: bool = True  # cat: names its device by itself (False: needs the device named)


def _cat(options: list[tuple[str, str, Any]], strong: bool):
    return lambda m: ("cat", options, None, strong)


def _color(m: re.Match):
    value, suffix = m.group(1), m.group(2)
    options = [("lights", "color", value)]
    if value == "cool" and not suffix:
        options.append(("ac", "mode", "cool"))
    return ("cat", options, None, bool(suffix))


def _num(m: re.Match):
    unit = m.group(2)
    unit = "deg" if unit and unit.startswith("deg") else unit
    return ("num", int(m.group(1)), unit, True)


# Order matters: at one position the first alternative that matches wins, so longer
# phrases come before their prefixes ("colour temperature" before "temperature").
_LEXICON: list[tuple[str, Any]] = [
    # numbers that are not settings: times, durations, differences, starting points
    (r"\b(?:from|by)\s+\d+\s*(?:%|degrees?\b)?", lambda m: ("skip", None, None, True)),
    (r"\b\d+\s*(?::\d+|am\b|pm\b|a\.m\.|p\.m\.|(?:minutes?|mins?|hours?|hrs?|seconds?|secs?"
     r"|o'clock|days?|weeks?|months?|years?|times?|people|st|nd|rd|th)\b)",
     lambda m: ("skip", None, None, True)),
    (r"\b(warm|cool|neutral)(?:[\s-]+(" + _COLOR_WORDS + r"))?\b", _color),
    (r"\bcolou?r[\s-]temperature\b", lambda m: ("param", "color", None, True)),
    (r"\b(?:tv|television|telly|smart tv)\b", lambda m: ("dev", "tv", None, True)),
    (r"\b(?:ac|air[\s-]?con(?:ditioning|ditioner)?|aircon|thermostat|heater|hvac"
     r"|climate(?: control)?|heating system|cooling system)\b",
     lambda m: ("dev", "ac", None, True)),
    (r"\b(?:lights?|lighting|lamps?|bulbs?)\b", lambda m: ("dev", "lights", None, True)),
    (r"\b(?:speakers?|sound ?system|music|audio|stereo|playlist|soundbar|tunes)\b",
     lambda m: ("dev", "speaker", None, True)),
    (r"\b(?:(?:home )?security(?: system)?|alarm system)\b",
     lambda m: ("dev", "security", None, True)),
    (r"\balarm(?:'s)?(?: volume)?\b|\bsiren\b", lambda m: ("param", "alarm_volume", None, True)),
    (r"\b(?:equali[sz]er|eq|sound profile|sound setting|audio profile|preset)\b",
     lambda m: ("param", "equalizer", None, True)),
    (r"\b(?:volume|sound level|sound)\b", lambda m: ("param", "volume", None, True)),
    (r"\b(?:brightness|brighter|dimmer|dimmed|dims|dim|dimming|brightened|brighten"
     r"|brightening|bright)\b", lambda m: ("param", "brightness", None, True)),
    (r"\b(?:temperature|temp)\b", lambda m: ("param", "temperature", None, True)),
    (r"\bfan(?:[\s-]?speed|[\s-]level)?\b|\bspeed\b", lambda m: ("param", "fan_speed", None, True)),
    (r"\b(?:input(?: source)?|source)\b", lambda m: ("param", "input_source", None, True)),
    (r"\b(?:colou?rs?|tone|hue)\b", lambda m: ("param", "color", None, True)),
    (r"\bmode\b", lambda m: ("param", "mode", None, True)),
    (r"\bhdmi1\b", _cat([("tv", "input_source", "HDMI1")], True)),
    (r"\bhdmi2\b", _cat([("tv", "input_source", "HDMI2")], True)),
    (r"\bav\b", _cat([("tv", "input_source", "AV")], True)),
    (r"\bnetflix\b", _cat([("tv", "input_source", "Netflix")], True)),
    (r"\byoutube\b", _cat([("tv", "input_source", "YouTube")], True)),
    (r"\bcooling\b", _cat([("ac", "mode", "cool")], True)),
    (r"\bheating\b", _cat([("ac", "mode", "heat")], True)),
    (r"\bheat\b", _cat([("ac", "mode", "heat")], False)),
    (r"\b(?:auto|automatic)\b", _cat([("ac", "mode", "auto")], False)),
    (r"\bdynamic\b", _cat([("lights", "mode", "dynamic")], False)),
    (r"\b(?:static|steady)\b", _cat([("lights", "mode", "static")], False)),
    (r"\b(?:bass[\s-]?boost(?:ed)?|boost(?:ed|ing)? (?:the )?bass|extra bass|heavy bass"
     r"|bass[\s-]heavy)\b", _cat([("speaker", "equalizer", "bass boost")], True)),
    (r"\b(?:treble[\s-]?boost(?:ed)?|boost(?:ed|ing)? (?:the )?treble|extra treble)\b",
     _cat([("speaker", "equalizer", "treble boost")], True)),
    (r"\b(?:balanced|flat)\b", _cat([("speaker", "equalizer", "balanced")], False)),
    (r"\b(?:disarmed|disarm|disarming|unarmed)\b", _cat([("security", "armed", False)], True)),
    (r"\b(?:armed|arm|arming|re-?armed)\b", _cat([("security", "armed", True)], True)),
    (r"\b(?:turned|switched|turn|switch|turning|switching)\s+on\b|\b(?:activated|activate"
     r"|enabled|enable|engaged|engage)\b|\b(?:is|are|now|stays|remains|still)\s+on\b"
     r"(?=\s*(?:$|and\b|with\b|now\b|too\b|as well\b|for\b))",
     lambda m: ("switch", True, None, True)),
    (r"\b(?:turned|switched|turn|switch|turning|switching)\s+off\b|\b(?:deactivated"
     r"|deactivate|disabled|disable|disengaged|disengage)\b|\b(?:is|are|now|stays|remains"
     r"|still)\s+off\b", lambda m: ("switch", False, None, True)),
    (r"\b(low|medium|mid|high)\b", lambda m: ("level", _FAN_LEVELS[m.group(1)], None, True)),
    (r"\b(\d+)\s*(%|degrees?\b)?", _num),
]
_MASTER = re.compile("|".join(f"(?P<g{i}>{p})" for i, (p, _) in enumerate(_LEXICON)))
_PARTS = [re.compile(p) for p, _ in _LEXICON]


def lex(clause: str) -> list[Token]:
    """Tokens of one normalised clause, left to right (skip tokens removed)."""
    tokens = []
    for m in _MASTER.finditer(clause):
        index = int(m.lastgroup[1:])
        # the alternative alone, at the same place, gives its own groups
        sub = _PARTS[index].match(clause, m.start())
        kind, value, unit, strong = _LEXICON[index][1](sub)
        if kind != "skip":
            tokens.append(Token(kind, value, m.start(), m.end(), unit, strong))
    return tokens


# --- 4) Reading the tokens ------------------------------------------------------------------

_ADJACENT = re.compile(r"^[\s-]*(?:(?:a|an|the|of|at|to|on|in)\s+)?$")


def _valid(device: str, param: str, value: Any) -> bool:
    spec = DEVICES.get(device, {}).get(param)
    if isinstance(spec, (IntParam, ChoiceParam, BoolParam)):
        return spec.accepts(value)
    return False


def _param_on(device: str, key: str) -> Optional[str]:
    """The schema parameter that parameter word `key` means on `device` (None: it has none)."""
    if device not in _PARAM_DEVICES.get(key, ()):
        return None
    return "alarm_volume" if (device == "security" and key == "volume") else key


@dataclass
class _Pending:
    """A parameter word waiting for its value; `device` None until the device is known."""

    key: str
    device: Optional[str]


@dataclass
class _Reader:
    """State carried while reading one text: the actions found and the current device."""

    actions: Actions = field(default_factory=dict)
    current: Optional[str] = None
    named: list[str] = field(default_factory=list)  # devices in the order they were named

    def assign(self, device: Optional[str], key: str, value: Any) -> bool:
        param = _param_on(device, key) if device else None
        if param is None or not _valid(device, param, value):
            return False
        self.actions.setdefault(device, {})[param] = value
        self.current = device
        return True

    def name(self, device: str) -> None:
        self.current = device
        self.named.append(device)

    def last_named_with(self, key: str) -> Optional[str]:
        named = next((d for d in reversed(self.named) if _param_on(d, key)), None)
        return named or _DEFAULT_DEVICE.get(key)


def _adjacent(clause: str, a: Token, b: Token) -> bool:
    return _ADJACENT.match(clause[a.end:b.start]) is not None


def _bind(reader: _Reader, key: str) -> _Pending:
    """A parameter word: its device is unique, or the current device's, or not yet known."""
    devices = _PARAM_DEVICES[key]
    if len(devices) == 1 or (key == "alarm_volume"):
        reader.name(devices[0])
        return _Pending(key, devices[0])
    if reader.current and _param_on(reader.current, key):
        return _Pending(key, reader.current)
    return _Pending(key, None)


def _read_number(reader: _Reader, tok: Token, nxt: Optional[Token], pending: Optional[_Pending],
                 clause: str, unresolved: list) -> tuple[Optional[_Pending], bool]:
    """Assign one number; returns the pending word left and whether `nxt` was used."""
    if tok.unit == "deg":
        reader.assign("ac", "temperature", tok.value)
        return pending, False
    if pending and pending.key not in ("input_source", "color", "mode", "equalizer"):
        if pending.device is None:
            unresolved.append((pending.key, tok.value))
        else:
            reader.assign(pending.device, pending.key, tok.value)
        return None, False
    if nxt is not None and nxt.kind == "param" and _adjacent(clause, tok, nxt):
        target = _bind(reader, nxt.value)
        if target.device is None:
            unresolved.append((target.key, tok.value))
        else:
            reader.assign(target.device, target.key, tok.value)
        return pending, True
    if reader.current and not (tok.unit == "%" and reader.current == "ac"):
        reader.assign(reader.current, _MAIN_PARAM[reader.current], tok.value)
    return pending, False


def _read_category(reader: _Reader, tok: Token, nxt: Optional[Token],
                   pending: Optional[_Pending], clause: str) -> Optional[_Pending]:
    """Assign a categorical word to the device it names, or to the device named around it."""
    options = tok.value
    if tok.strong and len(options) == 1:
        device, param, value = options[0]
        reader.assign(device, param, value)
        return None if pending and pending.key == param else pending
    for device, param, value in options:
        if pending and pending.key == param and pending.device in (device, None):
            reader.assign(device, param, value)
            return None
    for device, param, value in options:
        if device == reader.current:
            reader.assign(device, param, value)
            return pending
    for device, param, value in options:  # "balanced equalizer", "warm lights"
        if nxt is not None and _adjacent(clause, tok, nxt) and (
                (nxt.kind == "param" and _param_on(device, nxt.value) == param)
                or (nxt.kind == "dev" and nxt.value == device)):
            reader.name(device)
            reader.assign(device, param, value)
            return pending
    if tok.strong:  # e.g. "cool white" with no device yet: the lights
        device, param, value = options[0]
        reader.assign(device, param, value)
    return pending


def _read_switch(reader: _Reader, tok: Token, nxt: Optional[Token], clause: str) -> None:
    """on/off/activated only set the security system's `armed`."""
    target = reader.current
    if nxt is not None and nxt.kind in ("dev", "param") and \
            re.match(r"^\s*(?:(?:the|your|home|my)\s+)*$", clause[tok.end:nxt.start]):
        target = nxt.value if nxt.kind == "dev" else _PARAM_DEVICES[nxt.value][0]
    if target == "security":
        reader.assign("security", "armed", tok.value)


def _read_clause(reader: _Reader, clause: str) -> None:
    tokens = lex(clause)
    pending: Optional[_Pending] = None
    unresolved: list[tuple[str, Any]] = []  # (parameter word, value) waiting for a device
    skip_next = False
    for i, tok in enumerate(tokens):
        if skip_next:
            skip_next = False
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.kind == "dev":
            reader.name(tok.value)
            if pending and _param_on(tok.value, pending.key):
                pending.device = tok.value
            unresolved = [(k, v) for k, v in unresolved if not reader.assign(tok.value, k, v)]
        elif tok.kind == "param":
            pending = _bind(reader, tok.value)
        elif tok.kind == "num":
            pending, skip_next = _read_number(reader, tok, nxt, pending, clause, unresolved)
        elif tok.kind == "level":
            if pending and pending.key == "fan_speed":
                reader.assign("ac", "fan_speed", tok.value)
                pending = None
            elif nxt is not None and nxt.kind == "param" and nxt.value == "fan_speed" \
                    and _adjacent(clause, tok, nxt):
                reader.assign("ac", "fan_speed", tok.value)
                skip_next = True
        elif tok.kind == "cat":
            pending = _read_category(reader, tok, nxt, pending, clause)
        elif tok.kind == "switch":
            _read_switch(reader, tok, nxt, clause)
    for key, value in unresolved:  # no device named after it: the last one named that has it
        reader.assign(reader.last_named_with(key), key, value)


def parse_actions(text: str) -> Actions:
    """Device settings stated in an assistant turn: {device: {parameter: value}}.

    Values follow `personal.data.schema.DEVICES` (ints, canonical category strings, bool
    for `armed`); offers, questions and negated clauses set nothing; see the module doc.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_actions expects a string, got {type(text).__name__}")
    reader = _Reader()
    for sentence in statement_clauses(text):
        for clause in sentence:
            _read_clause(reader, clause)
    return reader.actions


# --- Comparing actions ----------------------------------------------------------------------

def clean_actions(actions: Optional[dict]) -> Actions:
    """Actions without untouched devices (`None` or `{}`), as plain dicts."""
    return {d: dict(p) for d, p in (actions or {}).items() if p}


def triples(actions: Optional[dict]) -> set[tuple[str, str, Any]]:
    """The (device, parameter, value) triples of an actions dict."""
    return {(d, p, v) for d, params in clean_actions(actions).items() for p, v in params.items()}


def parser_f1_vs_gold(dataset, max_errors: int = 20, seed: int = 0) -> dict[str, Any]:
    """Micro precision / recall / F1 of the parser against gold `actions` on a Dataset.

    Every assistant message with gold actions counts (an empty gold dict tests that offers
    and chit-chat parse to nothing). Returns counts, triple- and device-level scores, the
    share of turns parsed exactly, and up to `max_errors` misparsed turns sampled with
    `seed`: {"text", "gold", "parsed"}.
    """
    tp = fp = fn = dtp = dfp = dfn = exact = turns = 0
    errors = []
    for message in _gold_messages(dataset):
        gold, parsed = triples(message.actions), triples(parse_actions(message.text))
        turns += 1
        tp, fp, fn = tp + len(gold & parsed), fp + len(parsed - gold), fn + len(gold - parsed)
        gd, pd = set(clean_actions(message.actions)), {d for d, _, _ in parsed}
        dtp, dfp, dfn = dtp + len(gd & pd), dfp + len(pd - gd), dfn + len(gd - pd)
        if gold == parsed:
            exact += 1
        else:
            errors.append({"text": message.text, "gold": clean_actions(message.actions),
                           "parsed": parse_actions(message.text)})
    sample = random.Random(seed).sample(errors, min(max_errors, len(errors)))
    p, r, f = _prf(tp, fp, fn)
    dp, dr, df = _prf(dtp, dfp, dfn)
    return {"turns": turns, "triples_gold": tp + fn, "triples_parsed": tp + fp,
            "precision": p, "recall": r, "f1": f, "device_precision": dp,
            "device_recall": dr, "device_f1": df,
            "exact_match": exact / turns if turns else float("nan"),
            "misparsed_turns": len(errors), "misparses": sample}


def _gold_messages(dataset) -> Iterable:
    for persona in dataset.personas:
        for session in persona.sessions:
            for message in session.messages:
                if message.role == "assistant" and message.actions is not None:
                    yield message


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else float("nan"))
    r = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else float("nan"))
    f = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    return p, r, f
