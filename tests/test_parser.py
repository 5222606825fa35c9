"""The action parser on hand-written, real-style assistant turns (DATA.md's five devices)."""
import math

import pytest

from personal.data.schema import Dataset, Message, Persona, Session
from personal.eval.parser import clean_actions, normalize, parse_actions, parser_f1_vs_gold, triples

CASES = [
    # --- speaker: volume, equalizer
    ("I've set the speaker volume to 30 with a balanced equalizer. Enjoy your reading, Ethan.",
     {"speaker": {"volume": 30, "equalizer": "balanced"}}),
    ("Playing your jazz playlist at volume 45 with bass boost.",
     {"speaker": {"volume": 45, "equalizer": "bass boost"}}),
    ("The music is now at twenty percent with the treble boosted.",
     {"speaker": {"volume": 20, "equalizer": "treble boost"}}),
    ("Sure! Speaker set to 35% and the equalizer switched to treble boost.",
     {"speaker": {"volume": 35, "equalizer": "treble boost"}}),
    ("Balanced equalizer on the speaker, volume 50.",
     {"speaker": {"equalizer": "balanced", "volume": 50}}),
    ("I've put on some music at 25 with a bass-boosted sound.",
     {"speaker": {"volume": 25, "equalizer": "bass boost"}}),
    # --- AC: temperature, mode, fan speed
    ("The AC is now cooling at 22 degrees with fan speed 2.",
     {"ac": {"mode": "cool", "temperature": 22, "fan_speed": 2}}),
    ("I've set the air conditioner to heat mode at 24°C.",
     {"ac": {"mode": "heat", "temperature": 24}}),
    ("Heating is on at twenty-one degrees, fan on low.",
     {"ac": {"mode": "heat", "temperature": 21, "fan_speed": 1}}),
    ("I've set the temperature to 20 and the fan speed to three.",
     {"ac": {"temperature": 20, "fan_speed": 3}}),
    ("The thermostat is on auto at 23 degrees.",
     {"ac": {"mode": "auto", "temperature": 23}}),
    ("AC set to cool mode, 19 degrees, fan level 1.",
     {"ac": {"mode": "cool", "temperature": 19, "fan_speed": 1}}),
    ("I've lowered the temperature from 25 to 22 degrees.", {"ac": {"temperature": 22}}),
    ("Of course, Maria. The A/C is heating the room to 26 with the fan at medium.",
     {"ac": {"mode": "heat", "temperature": 26, "fan_speed": 2}}),
    ("The fan is on high and the AC is in heat mode at 24°C.",
     {"ac": {"fan_speed": 3, "mode": "heat", "temperature": 24}}),
    # --- lights: brightness, color, mode
    ("Lights dimmed to 40% in a warm tone.", {"lights": {"brightness": 40, "color": "warm"}}),
    ("I've set the lights to 70% brightness with a cool white color.",
     {"lights": {"brightness": 70, "color": "cool"}}),
    ("The living room lights are now at 55%, neutral and static.",
     {"lights": {"brightness": 55, "color": "neutral", "mode": "static"}}),
    ("I've switched the lighting to dynamic mode at eighty percent.",
     {"lights": {"mode": "dynamic", "brightness": 80}}),
    ("Brightness is now 30% on the lights, with a warm glow.",
     {"lights": {"brightness": 30, "color": "warm"}}),
    ("I've turned on the warm lights at 40%.", {"lights": {"color": "warm", "brightness": 40}}),
    ("Lamps at fifty percent, cool color, steady mode.",
     {"lights": {"brightness": 50, "color": "cool", "mode": "static"}}),
    ("I've dimmed the lights to 10% so you can rest.", {"lights": {"brightness": 10}}),
    # --- TV: volume, brightness, input source
    ("Switched the TV to Netflix at volume 25.", {"tv": {"input_source": "Netflix", "volume": 25}}),
    ("Done! The TV brightness is at 60 and the input is HDMI 2.",
     {"tv": {"brightness": 60, "input_source": "HDMI2"}}),
    ("I've set the volume to 20 on the TV.", {"tv": {"volume": 20}}),
    ("The television is on YouTube with the brightness at 75 and volume at 15.",
     {"tv": {"input_source": "YouTube", "brightness": 75, "volume": 15}}),
    ("TV input changed to HDMI one, volume thirty.", {"tv": {"input_source": "HDMI1", "volume": 30}}),
    ("I've switched the TV to AV and turned the volume down to 12.",
     {"tv": {"input_source": "AV", "volume": 12}}),
    ("Your TV is on Netflix. The volume is now 40.", {"tv": {"input_source": "Netflix", "volume": 40}}),
    # --- security: armed, alarm volume
    ("Security system armed with the alarm at 70.", {"security": {"armed": True, "alarm_volume": 70}}),
    ("I've disarmed the security system.", {"security": {"armed": False}}),
    ("I've turned off the security system for you.", {"security": {"armed": False}}),
    ("The alarm volume is set to 85 and the system is armed.",
     {"security": {"alarm_volume": 85, "armed": True}}),
    ("Home security is activated, alarm volume ninety.",
     {"security": {"armed": True, "alarm_volume": 90}}),
    ("The security system is on.", {"security": {"armed": True}}),
    # --- several devices in one turn
    ("I've set the AC to 22 degrees and dimmed the lights to 35%.",
     {"ac": {"temperature": 22}, "lights": {"brightness": 35}}),
    ("TV on HDMI1 at volume 18, and the lights at 20% in warm.",
     {"tv": {"input_source": "HDMI1", "volume": 18}, "lights": {"brightness": 20, "color": "warm"}}),
    ("Speaker at 30 with balanced sound; the AC is cooling at 21 degrees.",
     {"speaker": {"volume": 30, "equalizer": "balanced"}, "ac": {"mode": "cool", "temperature": 21}}),
    ("The TV is on Netflix and the brightness is 50; the lights are at 40%.",
     {"tv": {"input_source": "Netflix", "brightness": 50}, "lights": {"brightness": 40}}),
    ("I've set the TV to Netflix and the speaker volume to 30.",
     {"tv": {"input_source": "Netflix"}, "speaker": {"volume": 30}}),
    ("Lights at 60% with cool tone, and security armed with the alarm at 50.",
     {"lights": {"brightness": 60, "color": "cool"}, "security": {"armed": True, "alarm_volume": 50}}),
    # --- statements followed by offers or questions keep only the statement
    ("I've set the AC to twenty-two degrees. Would you like me to dim the lights to 30%?",
     {"ac": {"temperature": 22}}),
    ("The lights are at 45%, would you like a warmer color too?", {"lights": {"brightness": 45}}),
    ("Done: AC at 23 degrees. Let me know if you want the fan on 3.", {"ac": {"temperature": 23}}),
    ("I've set the speaker to 30, and I can also switch the TV to YouTube if you like.",
     {"speaker": {"volume": 30}}),
    ("The AC is at 24 degrees, is that comfortable?", {"ac": {"temperature": 24}}),
    # --- offers, questions, chit-chat: nothing
    ("Would you like me to adjust the brightness as well?", {}),
    ("Shall I dim the lights too?", {}),
    ("Should I set the AC to 20 degrees with the fan on 2?", {}),
    ("How about the TV at volume 30 on Netflix?", {}),
    ("If you'd like, I can set the lights to a warm 40%.", {}),
    ("Is 22 degrees okay for you, or do you prefer it cooler?", {}),
    ("Good evening, Sarah! How was your day?", {}),
    ("I've turned on the TV for you.", {}),
    ("Sure, I'll remind you in 10 minutes.", {}),
    # --- negations, corrections, times and out-of-range values
    ("I've set the temperature to 22 degrees, not 24.", {"ac": {"temperature": 22}}),
    ("I haven't changed the lights; the AC is at 21 degrees.", {"ac": {"temperature": 21}}),
    ("The AC will start at 7 pm at 23 degrees.", {"ac": {"temperature": 23}}),
    ("I've set the AC to 35 degrees.", {}),  # outside 16..30: dropped, not clipped
    ("Fan speed set to 5 and the temperature to 18.", {"ac": {"temperature": 18}}),
    ("I've raised the volume by 10 to 40 on the speaker.", {"speaker": {"volume": 40}}),
    # --- "brightness", "cool", "volume" decided by the device named
    ("The TV is on YouTube. I've turned the brightness up to 80.",
     {"tv": {"input_source": "YouTube", "brightness": 80}}),
    ("The lights are on. I've turned the brightness up to 80.", {"lights": {"brightness": 80}}),
    ("I've set the brightness to 65%.", {"lights": {"brightness": 65}}),
    ("The AC is set to cool.", {"ac": {"mode": "cool"}}),
    ("The lights are set to cool.", {"lights": {"color": "cool"}}),
    ("I've set the security system's volume to 60.", {"security": {"alarm_volume": 60}}),
    ("I've set the AC to 24 degrees to keep you warm.", {"ac": {"temperature": 24}}),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0][:40] for c in CASES])
def test_parses_real_style_turns(text, expected):
    assert parse_actions(text) == expected


def test_cases_cover_every_device_and_parameter():
    from personal.data.schema import DEVICES
    seen = {(d, p) for _, exp in CASES for d, params in exp.items() for p in params}
    assert seen == {(d, p) for d, params in DEVICES.items() for p in params}
    assert len(CASES) >= 50


def test_normalize_rewrites_numbers_units_and_aliases():
    assert normalize("Twenty-Two degrees") == "22 degrees"
    assert normalize("A/C at 21°C, HDMI 2, fifty percent") == "ac at 21 degrees, hdmi2, 50 %"
    assert normalize("this one is fine") == "this one is fine"  # "one" as a pronoun stays


def test_parse_rejects_non_text():
    with pytest.raises(TypeError, match="expects a string"):
        parse_actions(None)


def test_clean_actions_and_triples_drop_untouched_devices():
    actions = {"tv": None, "ac": {}, "lights": {"brightness": 40}}
    assert clean_actions(actions) == {"lights": {"brightness": 40}}
    assert triples(actions) == {("lights", "brightness", 40)}


def _dataset(turns):
    messages = []
    for text, gold in turns:
        messages += [Message("user", "hi"), Message("assistant", text, actions=gold)]
    return Dataset([Persona("persona_000", None, [], [Session(0, None, messages)])])


def test_parser_f1_vs_gold_counts_triples_and_samples_misparses():
    ds = _dataset([
        ("I've set the AC to 22 degrees.", {"ac": {"temperature": 22}}),
        ("Lights at 40%.", {"lights": {"brightness": 40, "color": "warm"}}),  # one missed
        ("Would you like the TV on?", {}),
    ])
    out = parser_f1_vs_gold(ds)
    assert out["turns"] == 3 and out["triples_gold"] == 3 and out["triples_parsed"] == 2
    assert out["precision"] == 1.0
    assert math.isclose(out["recall"], 2 / 3)
    assert math.isclose(out["f1"], 0.8)
    assert math.isclose(out["exact_match"], 2 / 3)
    assert out["misparses"] == [{"text": "Lights at 40%.",
                                 "gold": {"lights": {"brightness": 40, "color": "warm"}},
                                 "parsed": {"lights": {"brightness": 40}}}]


def test_parser_reads_the_simulator_gold_actions():
    synth = pytest.importorskip("personal.data.synth")
    out = parser_f1_vs_gold(synth.synthesize(4, 10, 0))
    assert out["turns"] > 50 and out["triples_gold"] > 20
    assert out["f1"] >= 0.98, out["misparses"][:5]
