"""Phrase banks of the user simulator, and the per-user `Voice` that draws from them.

PHRASING CONVENTIONS FOR ASSISTANT TURNS (`text` and `alt_text`) — what a parser may rely on
----------------------------------------------------------------------------------------------
1. Sentences end in ".", "!" or "?". A sentence ending in "?" (an offer, check or clarifying
   question) never states a setting: it contains no digit and none of the value words of
   rule 5. It may name a device ("Would you like me to adjust the lights as well?").
2. A declarative sentence names a device only if the turn sets that device, and every value
   in it is a value the turn sets (gold `actions` = exactly the settings stated in the
   declarative sentences; a turn that sets nothing names no device outside its question).
   No digits appear in assistant text except setting values (and the "1"/"2" of HDMI1 and
   HDMI2); numbers are always digits, never words.
3. Device names (case-insensitive, whole words): ac: "AC", "air conditioning", "air
   conditioner"; lights: "lights", "lighting"; tv: "TV", "television"; speaker: "speaker";
   security: "security system", "alarm system", "home security system" (the parameter
   phrase "alarm volume" also names it).
4. A value belongs to the nearest device named before it in the same sentence (a device's
   name always precedes its values), except "armed"/"disarmed", which can only be security.
5. Parameter phrases:
   - ac.temperature: "<n> degrees", "<n> degrees Celsius" or "<n>°C";
   - ac.mode: "<cool|heat|auto> mode" (always followed by the word "mode");
   - ac.fan_speed: "fan speed <n>", "fan speed of <n>", "fan speed at <n>";
   - lights.brightness: "<n>%" in a lights clause ("40%", "40% brightness", "a brightness of
     40%"); every other percentage follows its keyword ("brightness 40%" for the TV,
     "alarm volume 70%");
   - lights.color: "<warm|cool|neutral>" followed by "light", "tone", "white" or "colour";
   - lights.mode: "<static|dynamic> mode";
   - tv.volume / speaker.volume: the word "volume" then (after "at"/"to"/"is now" or nothing)
     the number: "volume 30", "volume at 30", "volume to 30", "volume is now 30";
   - tv.brightness: "brightness <n>%" or "brightness at <n>%";
   - tv.input_source: the exact tokens HDMI1, HDMI2, AV, Netflix, YouTube;
   - speaker.equalizer: "bass boost", "balanced", "treble boost" (exact words);
   - security.armed: "armed" (true) / "disarmed" (false);
   - security.alarm_volume: "alarm volume" then (after "at"/"to"/"of"/"is now" or nothing) the
     number with "%" ("alarm volume at 70%", "alarm volume 70%").
6. Relative changes are stated as the resulting absolute value ("I've turned the AC up to
   23 degrees"); an "offer" question about another device is not an action.
`tests/test_synth.py` holds a 40-line reference parser built only on these rules; it recovers
the gold actions of every assistant turn exactly.
User turns follow no such rules: they speak as people do (nicknames like "telly", wishes
without values, typos of register such as "pls").

Bank entries are strings "tags|text": tags are comma-separated; `f` / `c` mark formal /
casual register (no tag = neutral), other tags are requirements the caller must offer
(e.g. `num`: the first value of the clause is a number; `low`/`high`: a light level).
"""
from __future__ import annotations

import bisect
import random
import zlib
from contextlib import contextmanager
from typing import Iterable, Optional

_NO_TAGS: frozenset[str] = frozenset()

# --- Device names ---------------------------------------------------------------------------

ASSISTANT_ALIASES = {
    "ac": ("AC", "AC", "air conditioning", "air conditioner"),
    "lights": ("lights", "lights", "lighting"),
    "tv": ("TV", "TV", "television"),
    "speaker": ("speaker",),
    "security": ("security system", "alarm system", "home security system"),
}
PLURAL_ALIASES = {"lights"}

USER_NICKNAMES = {
    "ac": ("AC", "air con", "aircon", "air conditioning", "AC unit"),
    "lights": ("lights", "lamps", "lighting"),
    "tv": ("TV", "telly", "television", "TV"),
    "speaker": ("speaker", "speakers", "sound system"),
    "security": ("alarm", "security system", "security", "house alarm"),
}

#: Words that are schema values; assistant questions never contain them (convention 1).
VALUE_WORDS = ("cool", "heat", "auto", "warm", "neutral", "static", "dynamic", "bass boost",
               "balanced", "treble boost", "HDMI1", "HDMI2", "AV", "Netflix", "YouTube",
               "armed", "disarmed")

# --- Assistant: value phrases (head = first value of a clause, tail = later values) ------

HEAD = {
    ("ac", "temperature"): ("{v} degrees", "{v} degrees", "{v}°C", "{v} degrees Celsius"),
    ("ac", "mode"): ("{v} mode",),
    ("ac", "fan_speed"): ("fan speed {v}",),
    ("lights", "brightness"): ("{v}%", "{v}%", "{v}% brightness", "a brightness of {v}%"),
    ("lights", "color"): ("a {v} tone", "{v} white", "a {v} colour"),
    ("lights", "mode"): ("{v} mode",),
    ("tv", "input_source"): ("{v}",),
    ("tv", "volume"): ("volume {v}",),
    ("tv", "brightness"): ("brightness {v}%",),
    ("speaker", "volume"): ("volume {v}",),
    ("speaker", "equalizer"): ("the {v} equalizer", "{v} on the equalizer"),
}
TAIL = {
    ("ac", "temperature"): (" at {v} degrees", " at {v}°C", ", {v} degrees", " at {v} degrees"),
    ("ac", "mode"): (" in {v} mode", " on {v} mode", ", {v} mode"),
    ("ac", "fan_speed"): (" with fan speed {v}", " and fan speed {v}", ", fan speed {v}",
                          " with a fan speed of {v}", " with the fan speed at {v}"),
    ("lights", "brightness"): (" at {v}%", " at {v}% brightness", " with {v}% brightness"),
    ("lights", "color"): (" with {v} light", " in a {v} tone", ", {v} white", " and a {v} colour",
                          " in {v} white", " with a {v} tone"),
    ("lights", "mode"): (" in {v} mode", " on {v} mode", ", {v} mode"),
    ("tv", "input_source"): (" on {v}", ", input {v}"),
    ("tv", "volume"): (" with the volume at {v}", " at volume {v}", ", volume {v}",
                       " and the volume at {v}", " with volume {v}"),
    ("tv", "brightness"): (" and brightness at {v}%", ", brightness {v}%",
                           " with the brightness at {v}%", " and brightness {v}%"),
    ("speaker", "volume"): (" at volume {v}", " with the volume at {v}", ", volume {v}"),
    ("speaker", "equalizer"): (" with the equalizer on {v}", " and the {v} equalizer",
                               ", equalizer on {v}", " with the {v} equalizer"),
}
#: Orders in which a device's values are spoken (first present one is the head).
PARAM_ORDERS = {
    "ac": (("temperature", "mode", "fan_speed"), ("mode", "temperature", "fan_speed")),
    "lights": (("brightness", "color", "mode"), ("color", "brightness", "mode"), ("brightness", "mode", "color")),
    "tv": (("input_source", "volume", "brightness"), ("volume", "brightness", "input_source")),
    "speaker": (("volume", "equalizer"), ("equalizer", "volume")),
}
NUMERIC = {("ac", "temperature"), ("ac", "fan_speed"), ("lights", "brightness"), ("tv", "volume"),
           ("tv", "brightness"), ("speaker", "volume"), ("security", "alarm_volume")}

# --- Assistant: clause frames per device -------------------------------------------------------
# {dev} device alias, {Dev} capitalised, {be} is/are, {p} the value phrase.
_COMMON_FRAMES = (
    "I've set the {dev} to {p}.", "I've set the {dev} to {p}.", "The {dev} {be} now set to {p}.",
    "I've adjusted the {dev} to {p}.", "I've changed the {dev} to {p}.", "c|{Dev} set to {p}.",
    "f|I have set the {dev} to {p}.", "f|The {dev} {be} now configured to {p}.",
    "I've switched the {dev} to {p}.", "num|The {dev} {be} now at {p}.", "c,num|Done, the {dev} {be} at {p}.",
    "Your {dev} {be} now set to {p}.",
)
FRAMES = {
    "ac": _COMMON_FRAMES + ("num|The {dev} is now running at {p}.", "num|I've got the {dev} going at {p}.",
                            "temp_up|I've turned the {dev} up to {p}.", "temp_down|I've turned the {dev} down to {p}."),
    "lights": _COMMON_FRAMES + ("low|I've dimmed the {dev} to {p}.", "low|I've turned the {dev} down to {p}.",
                                "high|I've brightened the {dev} to {p}.", "high|I've turned the {dev} up to {p}."),
    "tv": _COMMON_FRAMES + ("input|The {dev} is now on {p}.", "input|I've put the {dev} on {p}.",
                            "input|I've turned on the {dev} and put it on {p}.", "c,input|{Dev} on {p}.",
                            "vol|I've set the {dev} volume to {p}.", "vol|The {dev} volume is now {p}."),
    "speaker": _COMMON_FRAMES + ("num|The {dev} is playing at {p}.", "num|I've started the {dev} at {p}.",
                                 "vol|I've set the {dev} volume to {p}.", "vol|The {dev} volume is now {p}.",
                                 "c,vol|{Dev} volume at {p}."),
}
SECURITY_FRAMES = {
    "armed": ("I've armed the {dev}{t}.", "The {dev} is now armed{t}.", "c|{Dev} armed{t}.",
              "I've set the {dev} to armed{t}.", "Your {dev} is armed{t}.", "f|I have armed the {dev}{t}."),
    "disarmed": ("I've disarmed the {dev}.", "The {dev} is now disarmed.", "c|{Dev} disarmed.",
                 "I've set the {dev} to disarmed.", "Your {dev} is disarmed.", "f|I have disarmed the {dev}."),
    "volume": ("I've set the {dev} alarm volume to {v}%.", "The {dev} alarm volume is now {v}%.",
               "I've changed the {dev} alarm volume to {v}%."),
}
SECURITY_TAIL = (" with the alarm volume at {v}%", ", alarm volume {v}%", " with an alarm volume of {v}%",
                 " with its alarm volume at {v}%")
#: How an offer names another parameter of a device ("Shall I set the TV volume too?").
PARAM_OFFER_WHAT = {
    ("ac", "temperature"): ("temperature", "AC temperature"), ("ac", "mode"): ("AC mode", "mode"),
    ("ac", "fan_speed"): ("fan speed", "AC fan speed"), ("lights", "brightness"): ("brightness", "brightness of the lights"),
    ("lights", "color"): ("colour of the lights", "light colour"), ("lights", "mode"): ("lighting mode",),
    ("tv", "volume"): ("TV volume", "volume"), ("tv", "brightness"): ("TV brightness", "screen brightness"),
    ("tv", "input_source"): ("TV input", "input"), ("speaker", "volume"): ("speaker volume", "volume"),
    ("speaker", "equalizer"): ("equalizer", "speaker equalizer"), ("security", "alarm_volume"): ("alarm volume",),
}
JOINERS = (", and ", " and ", "; ")

# --- Assistant: the rest of a turn ----------------------------------------------------------

BANK: dict[str, tuple[str, ...]] = {
    "opener": ("Sure.", "Of course.", "Got it.", "Done.", "All set.", "No problem.", "Okay.", "Right away.",
               "Sure thing.", "f|Certainly.", "f|Very well.", "f|Of course, right away.",
               "f|Absolutely, I can help with that.", "f|Understood.", "f|It would be my pleasure.",
               "c|You got it!", "c|On it!", "c|Easy!", "c|Done and done.", "c|No worries!",
               "c|Coming right up!", "Happy to help.", "Absolutely!", "Consider it done."),
    "greeting": ("morning|Good morning!", "afternoon|Good afternoon!", "evening|Good evening!",
                 "night|Hello!", "Hi there!", "c|Hey!", "f|Hello.", "morning|Morning!"),
    "context": ("cold|It's cold out there, so", "cold|Since it's chilly outside,", "cold|With the cold weather,",
                "hot|Since it's a hot day,", "hot|With the hot weather,", "hot|It's a scorcher today, so",
                "rainy|Since it's raining,", "rainy|With the rain outside,", "snowy|With the snow outside,",
                "snowy|Since it's snowing,", "late|Since it's late,", "late|As it's getting late,",
                "dark|As it's still dark outside,", "dusk|Now that it's dark outside,",
                "sunny|With the sun out,"),
    "activity": ("Enjoy your {a}!", "Enjoy your {a}.", "All set for your {a}.",
                 "Everything is ready for your {a}.", "That should be just right for your {a}.",
                 "Have a good {a}!", "Hope you enjoy your {a}.", "Perfect for your {a}.",
                 "f|I trust that suits your {a}.", "f|Everything is prepared for your {a}.",
                 "c|Have fun with your {a}!", "c|Ready for your {a}!"),
    "name_tail": ("Here you go, {n}.", "There you go, {n}!", "All done, {n}.", "f|At your service, {n}.",
                  "c|Sorted, {n}!"),
    "history": ("Just the way you like it.", "That's your usual setting.", "Same as you usually have it.",
                "f|That is your usual preference.", "c|Just how you like it!", "As you usually have it.",
                "I remembered how you like it."),
    "warm": ("Hope that's comfortable.", "I hope that helps.", "Let me know if you need anything else.",
             "Happy to help!", "cold|Stay cosy!", "morning|Have a lovely morning!",
             "evening|Have a lovely evening!", "night|Sleep well!",
             "afternoon|Enjoy the rest of your afternoon!", "f|It is my pleasure to help."),
    "offer_param": ("Would you like me to adjust the {what} as well?", "Shall I set the {what} too?",
                    "Do you want me to change the {what} as well?", "Should I adjust the {what} too?",
                    "f|Would you also like me to adjust the {what}?", "c|Want the {what} changed too?",
                    "Would you like to change the {what} as well?"),
    "check": ("Does that feel comfortable?", "Is that to your liking?", "How does that sound?",
              "Does that work for you?", "Is that better?", "f|Is that satisfactory?", "c|Good?",
              "c|That work for you?", "Is that comfortable for you?", "Is this what you had in mind?",
              "Is that how you like it?"),
    "more": ("Is there anything else you'd like me to adjust?", "Anything else I can do for you?",
             "Is there anything else you need?", "Would you like anything else?",
             "f|Is there anything further I can assist you with?", "c|Anything else?", "c|Need anything else?",
             "Can I help with anything else?", "Would you like me to change anything else?",
             "f|May I help you with anything else?"),
    "offer": ("Would you like me to adjust the {dev} as well?", "Shall I adjust the {dev} too?",
              "Do you want me to change the {dev} as well?", "Would you like the {dev} adjusted too?",
              "Should I set up the {dev} as well?", "c|Want me to sort out the {dev} too?",
              "f|May I also adjust the {dev} for you?", "f|Would you also like me to adjust the {dev}?",
              "Would you like me to change anything on the {dev}?", "Shall I do the {dev} as well?",
              "lights,low|Shall I dim the {dev} as well?", "lights,high|Would you like the {dev} brighter too?",
              "ac|Shall I turn on the {dev} as well?", "ac|Should I change the temperature as well?",
              "tv|Would you like me to turn on the {dev}?", "tv|Shall I put something on the {dev}?",
              "speaker|Would you like some music on the {dev}?", "speaker|Shall I play something on the {dev}?",
              "security|Shall I take care of the {dev} too?", "security|Would you like me to check the {dev} as well?"),
    "clarify": ("ac|What temperature would you like for the {dev}?", "ac|How would you like the {dev} set?",
                "ac|Which temperature should I set the {dev} to?",
                "lights|How bright would you like the {dev}?", "lights|What brightness would you like for the {dev}?",
                "lights|How would you like the {dev} set?",
                "tv|What would you like on the {dev}?", "tv|Which input should I put the {dev} on?",
                "tv|How would you like the {dev} set up?",
                "speaker|What volume would you like for the {dev}?", "speaker|How loud would you like the {dev}?",
                "security|How would you like the {dev} set?", "security|What should I do with the {dev}?"),
    "clarify_usual": ("Would you like your usual {a} settings?", "Shall I set things up as usual for your {a}?",
                      "f|Would you like your usual preferences for your {a}?", "c|The usual for your {a}?"),
    "clarify_lead": ("Of course.", "Sure.", "Happy to.", "f|Certainly.", "c|Sure thing.", "Okay."),
    "close": ("You're welcome!", "My pleasure.", "Anytime!", "Glad I could help.", "No problem at all.",
              "f|You're most welcome.", "f|It was my pleasure.", "c|No worries!", "c|Anytime!",
              "You're very welcome."),
    "close_after_decline": ("Alright, everything is set then.", "No problem, I'll leave it as it is.",
                            "Okay, all done for now.", "f|Very well, everything is in place.",
                            "c|Cool, all sorted then."),
    "close_tail": ("morning|Have a great day!", "afternoon|Enjoy your afternoon!", "evening|Have a lovely evening!",
                   "night|Sleep well!", "night|Good night!", "cold|Stay cosy!", "Take care!",
                   "Just let me know if you need anything else.", "I'm here if you need me."),
}

# --- User turns --------------------------------------------------------------------------------

USER_BANK: dict[str, tuple[str, ...]] = {
    "greeting": ("morning|Good morning!", "morning|Morning!", "afternoon|Good afternoon!",
                 "evening|Good evening!", "Hi!", "Hello!", "c|Hey!", "c|Hey there,", "c|Yo,",
                 "f|Hello there.", "Hi there!", "c|Heya!"),
    "weather": ("very_cold|It's absolutely freezing out there.", "cold|It's really cold out.",
                "cold|Brr, it's chilly today.", "cold|It's pretty cold outside.", "hot|It's boiling today.",
                "hot|It's so hot out there.", "warm|It's quite warm today.", "mild|It's pretty mild out.",
                "rainy|It's pouring with rain.", "rainy|It's a grey, rainy day.", "snowy|It's snowing again.",
                "snowy|There's snow everywhere outside.", "sunny|It's lovely and sunny out.",
                "cloudy|It's a bit grey and cloudy today.", "late|It's getting really late.",
                "late|It's late and I'm still up.", "dark|It's still dark outside.",
                "f|The weather is rather unpleasant today."),
    "doing": ("I'm about to start my {a}.", "Time for my {a}.", "I'm settling in for my {a}.",
              "Getting ready for my {a}.", "f|I am about to begin my {a}.", "c|{a} time!",
              "I was just about to start my {a}.", "It's time for my {a} now."),
    "hobby": ("I'm planning some {h} later.", "I want to fit in some {h} today.",
              "I've been reading up on {h} again.", "c|thinking about some {h} later lol.",
              "f|I intend to spend some time on {h} later.", "I can't stop thinking about {h} lately."),
    "mood": ("neg,dayend|What a long day it has been.", "neg|I'm so tired today.", "pos|Feeling great today!",
             "pos|I'm in a really good mood.", "c,neg|ugh, what a day.", "c,neg|kinda exhausted tbh.",
             "f,neg,dayend|It has been a rather tiring day.", "pos,dayend|I had a lovely day.",
             "neg,morning|I barely slept last night.", "neg|I've got so much on today.",
             "pos|What a wonderful day it is.", "c,pos|feeling awesome today.",
             "f,pos|I am in rather good spirits today.", "pos,dayend|It was a really nice day."),
    "aside": ("I'll be in the living room for a while.", "I've got friends coming over later.",
              "I'm expecting a call in a bit.", "I just want to get comfortable.", "I'll be home all day.",
              "c|gonna chill for a bit.", "c|finally some me time lol.", "f|I should like everything ready shortly.",
              "dayend|The day is finally winding down.", "morning|I need to be out of the door soon.",
              "I've got a busy day tomorrow.", "I'm trying to save a bit on energy this month."),
    "request": ("Could you {vp}?", "Can you {vp}?", "Please {vp}.", "I'd like you to {vp}.",
                "Would you {vp}, please?", "{Vp}, please.", "f|Would you kindly {vp}?",
                "f|I would like you to {vp}, please.", "f|Could you please {vp}?",
                "c|{Vp} pls.", "c|can you {vp}?", "c|Just {vp}.", "c|hey can you {vp}?",
                "Could you {vp} for me?"),
    "wish_frame": ("Could you {vp}?", "Can you {vp}?", "I'd love it if you could {vp}.",
                   "Any chance you could {vp}?", "f|Would you be so kind as to {vp}?",
                   "c|can u {vp}?", "c|{Vp} pls.", "Please {vp}.", "Do you think you could {vp}?"),
    "usual": ("Could you set things up the way I like for my {a}?", "Can you do my usual {a} setup?",
              "f|Could you please prepare everything as usual for my {a}?", "c|usual {a} setup pls.",
              "The usual for my {a}, please.", "Could you get everything ready for my {a}, like always?",
              "Can you set everything up for my {a} the way I usually have it?"),
    "accept": ("Yes, please.", "Yes please!", "Sure, go ahead.", "f|Yes, that would be lovely.",
               "c|Yeah, do it.", "c|Yep!", "Oh yes, good idea.", "That would be great, yes.",
               "f|Yes, thank you, that would be very helpful.", "c|Yeah go for it."),
    "accept_usual": ("The usual, please.", "You know how I like it.", "Just like last time.",
                     "Same as always, please.", "f|As I usually have it, please.", "c|the usual lol.",
                     "Whatever I normally have is fine."),
    "accept_exact": ("Set it to {p}.", "{P}, please.", "Make it {p}.", "Let's go with {p}.",
                     "c|{p} pls.", "f|I would like {p}, please.", "I'd like {p}."),
    "ack": ("That's great.", "Perfect.", "Lovely, thanks.", "c|Nice.", "c|Sweet.", "f|That is fine, thank you.",
            "Yes, that's good.", "Great."),
    "not_now": ("No, thanks.", "Not right now.", "Maybe later.", "c|Nah.", "f|Not at the moment, thank you.",
                "No need for that.", "c|Nope, not now."),
    "decline": ("No, thanks, that's all for now.", "No need, thanks.", "c|Nah, I'm good.",
                "f|No, thank you. That will be all.", "No thanks, I'm fine as it is.",
                "c|nope, all good.", "I think that's everything, thanks."),
    "thanks": ("Thanks, that's perfect!", "Great, thank you!", "c|Cheers!", "c|Awesome, thx.",
               "f|Thank you very much, that is lovely.", "Perfect, thanks a lot.", "That's great, thank you.",
               "c|nice, ty!", "f|Thank you, that is exactly right.", "Lovely, thanks so much."),
    "answer": ("{P}, please.", "Let's go with {p}.", "Hmm, {p} would be nice.", "c|{p} is fine.",
               "f|I would prefer {p}, please.", "I think {p}.", "Maybe {p}?"),
    "answer_usual": ("Yes, the usual, please.", "Yes please, just like always.", "c|yep, the usual.",
                     "f|Yes, my usual settings, please.", "That would be perfect, yes."),
    "adjust_lead": ("Actually,", "Hmm,", "Oh, actually,", "c|Hmm, actually", "f|On second thought,", "Sorry,"),
    "catchphrase": ("Cheers!", "You're a star.", "Much appreciated.", "Thanks a bunch!", "No rush.",
                    "c|lol", "c|Ta!", "f|Thank you kindly.", "Love it.", "c|legend.",
                    "f|I do appreciate it.", "Thanks so much."),
}

#: How a user asks for one device's settings without giving values, by direction.
WISHES = {
    ("ac", "heat"): ("warm the room up a bit", "get the heating going", "take the chill off the room",
                     "make it a bit warmer in here", "heat the place up a little"),
    ("ac", "cool"): ("cool the place down", "get the {nick} going, it's stuffy in here",
                     "make it cooler in here", "bring the temperature down a bit"),
    ("ac", "auto"): ("sort out the temperature in here", "keep the temperature comfortable",
                     "set the {nick} the way I like it"),
    ("lights", "low"): ("dim the lights a bit", "make the lighting a bit softer", "make it cosy in here",
                        "turn the {nick} down"),
    ("lights", "high"): ("brighten the place up", "turn the {nick} up", "get some proper light in here",
                         "make it brighter in here"),
    ("lights", "mid"): ("sort out the {nick}", "fix the lighting for me", "set the {nick} nicely"),
    ("tv", "any"): ("put the {nick} on for me", "get the {nick} ready", "set up the {nick} for my show",
                    "turn the {nick} on"),
    ("speaker", "any"): ("put some music on", "get the {nick} going", "play something on the {nick}",
                         "start some music for me"),
    ("security", "armed"): ("lock things down", "secure the house", "set the {nick}", "turn the {nick} on"),
    ("security", "disarmed"): ("turn the {nick} off", "switch off the {nick}", "deactivate the {nick}"),
}

#: Why a user wants a device changed (said along with a request or a yes), by direction.
REASONS = {
    ("ac", "heat"): ("it's a bit chilly in here", "I can feel a draught coming in", "my hands are freezing",
                     "the house never warms up on its own"),
    ("ac", "cool"): ("it's getting really stuffy in here", "I'm starting to sweat a bit",
                     "the flat gets so hot in the afternoon", "I can't think when it's this stuffy"),
    ("ac", "auto"): ("I just want it comfortable in here", "I don't want it too hot or too cold",
                     "the air feels a bit off in here"),
    ("lights", "low"): ("the light is a bit harsh right now", "I want it nice and relaxed in here",
                        "my eyes are tired after today"),
    ("lights", "high"): ("I can hardly see what I'm doing", "it's a bit gloomy in here",
                         "I need to see properly for this"),
    ("lights", "mid"): ("I want the lighting just right", "the room feels a bit off like this"),
    ("tv", "any"): ("I want to catch my show", "there's something I really want to watch",
                    "I've been looking forward to this all day"),
    ("speaker", "any"): ("I'd love some background music", "it's far too quiet in here",
                         "music helps me get going"),
    ("security", "armed"): ("I want to feel safe tonight", "I don't want to worry about the house",
                            "I'd rather be careful"),
    ("security", "disarmed"): ("I'm home now", "I don't want it going off while I'm in"),
}

#: User-side verbs per device for exact requests ({nick}, {p}).
USER_FRAMES = {
    "ac": ("set the {nick} to {p}", "put the {nick} on {p}", "turn the {nick} to {p}", "switch the {nick} to {p}"),
    "lights": ("set the {nick} to {p}", "put the {nick} at {p}", "change the {nick} to {p}"),
    "tv": ("put the {nick} on {p}", "set the {nick} to {p}", "switch the {nick} to {p}"),
    "speaker": ("set the {nick} to {p}", "put the {nick} on {p}", "turn the {nick} to {p}"),
}
USER_VALUE = {
    ("ac", "temperature"): ("{v} degrees", "{v}", "about {v} degrees"),
    ("ac", "mode"): ("{v} mode", "{v}"),
    ("ac", "fan_speed"): ("fan speed {v}", "the fan on {v}", "fan at {v}"),
    ("lights", "brightness"): ("{v}%", "{v} percent", "{v}"),
    ("lights", "color"): ("{v} light", "a {v} colour", "{v}"),
    ("lights", "mode"): ("{v} mode", "{v}"),
    ("tv", "input_source"): ("{v}",),
    ("tv", "volume"): ("volume {v}", "volume at {v}"),
    ("tv", "brightness"): ("brightness {v}", "brightness at {v}%"),
    ("speaker", "volume"): ("volume {v}", "volume at {v}"),
    ("speaker", "equalizer"): ("{v}", "{v} on the equalizer", "the {v} setting"),
    ("security", "alarm_volume"): ("alarm volume {v}", "the alarm at {v}"),
}
PARAM_WORDS = {"temperature": "temperature", "fan_speed": "fan speed", "brightness": "brightness",
               "volume": "volume", "alarm_volume": "alarm volume"}
ADJUST_RELATIVE = {
    ("ac", "temperature", 1): ("could you make it a bit warmer?", "it's still a bit chilly, could you turn it up a notch?"),
    ("ac", "temperature", -1): ("it's a little too warm now, could you lower it a bit?", "could you make it a touch cooler?"),
    ("ac", "fan_speed", 1): ("could you turn the fan up a bit?",),
    ("ac", "fan_speed", -1): ("the fan is a bit loud, could you turn it down?",),
    ("lights", "brightness", 1): ("could you make the {nick} a bit brighter?", "it's a bit dark, could you turn the {nick} up?"),
    ("lights", "brightness", -1): ("could you dim the {nick} a little more?", "the {nick} are a bit harsh, could you lower them?"),
    ("tv", "volume", 1): ("I can barely hear it, could you turn the {nick} up?", "could you turn the volume up a bit?"),
    ("tv", "volume", -1): ("that's a bit loud, could you turn the {nick} down?", "could you lower the volume a little?"),
    ("tv", "brightness", 1): ("could you make the picture a bit brighter?",),
    ("tv", "brightness", -1): ("the screen is too bright, could you dim it?",),
    ("speaker", "volume", 1): ("could you turn the music up a bit?", "can you crank it up a little?"),
    ("speaker", "volume", -1): ("that's a bit loud, could you turn the music down?", "could you lower the {nick} a bit?"),
    ("security", "alarm_volume", 1): ("could you make the alarm a bit louder?",),
    ("security", "alarm_volume", -1): ("could you make the alarm a bit quieter?",),
}


# --- Parsing bank entries -----------------------------------------------------------------------

def parse_entry(entry: str) -> tuple[frozenset[str], str]:
    """'f,num|text' -> ({'f', 'num'}, 'text'); plain 'text' -> (∅, 'text')."""
    if "|" in entry:
        tags, text = entry.split("|", 1)
        return frozenset(tags.split(",")), text
    return frozenset(), entry


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- Voice: a user's preferences over the banks --------------------------------------------------

class Voice:
    """How one user's dialogues are worded: register and favourite entries per bank.

    Every bank entry has weight 1; only entries of the user's register are used (neutral
    entries fit every register); a few favourites per bank — shared by the whole archetype,
    plus two personal ones — weigh much more. Favourites are drawn from string seeds
    (`archetype:bank`, `user_key:bank`), so they do not depend on the order in which banks are
    first used; two populations share the archetype favourites but not the personal ones.
    A favourite stays a favourite whatever requirement tags a call offers.
    """

    ARCHETYPE_WEIGHT = 5.0
    PERSONAL_WEIGHT = 10.0
    #: Assistant banks (every bank not named `user_*`): the assistant is one model for every
    #: user, so a few population-wide favourites dominate its wording (real replies open with
    #: five words two thirds of the time) and a user's own favourites weigh little.
    ASSISTANT_SHARED_WEIGHT = 12.0
    ASSISTANT_ARCHETYPE_WEIGHT = 1.0
    ASSISTANT_PERSONAL_WEIGHT = 2.0
    #: Inside `cued(cue)`, the chance that an assistant bank gives the one entry that request
    #: kind `cue` favours (the same for every user of the register) rather than a weighted
    #: draw: replies follow from requests, so a similar request gets a similar reply.
    CUE_SHARE = 0.98
    #: The assistant's house style: the share of request kinds (inside `cued`) for which an
    #: assistant bank gives its first entry that fits, and the chance of it outside a cue
    #: ("I've set the {dev} to {p}.", "Sure.", "Would you like me to adjust the {dev} as
    #: well?"): the same shape whatever the device or the user. (Spreading it over the first
    #: three entries, for more varied openings, cost ~0.05 of the reply baseline: measured.)
    HOUSE_SHARE = 0.6
    _parsed: dict[str, list[tuple[frozenset[str], str]]] = {}  # bank name -> parsed entries
    _requirements: dict[str, frozenset[str]] = {}  # bank name -> tags its entries require
    _shared: dict[tuple[str, str, str], list[float]] = {}  # (archetype, bank, register) -> weights

    def __init__(self, user_key: str, archetype: str, register: str):
        if register not in ("f", "c", "n"):
            raise ValueError(f"register must be 'f', 'c' or 'n', got {register!r}")
        self.user_key = user_key
        self.archetype = archetype
        self.register = register
        self._tables: dict[str, dict[frozenset[str], tuple[list[str], list[float], list[str]]]] = {}
        self.cue: Optional[str] = None

    @classmethod
    def _entries(cls, name: str, entries: tuple[str, ...]) -> list[tuple[frozenset[str], str]]:
        """The bank's entries parsed (a bank is always used under the same name)."""
        if name not in cls._parsed:
            cls._parsed[name] = [parse_entry(e) for e in entries]
            cls._requirements[name] = frozenset().union(*(t for t, _ in cls._parsed[name])) - {"f", "c"}
        return cls._parsed[name]

    def _in_register(self, tags: frozenset[str]) -> bool:
        reg = tags & {"f", "c"}
        return not reg or self.register in reg

    def _weights(self, name: str, entries: tuple[str, ...]) -> list[float]:
        """Weights of every entry of a bank for this user (0 outside the register)."""
        parsed = self._entries(name, entries)
        fits = [i for i, (tags, _) in enumerate(parsed) if self._in_register(tags)]
        assistant = _assistant_bank(name)
        key = (self.archetype, name, self.register)
        if key not in self._shared:
            weights = [1.0 if i in fits else 0.0 for i in range(len(parsed))]
            if assistant:
                for i in random.Random(f"population:{name}").sample(fits, min(len(fits), 1 + len(fits) // 6)):
                    weights[i] += self.ASSISTANT_SHARED_WEIGHT
            arch = random.Random(f"{self.archetype}:{name}")
            for i in arch.sample(fits, min(len(fits), 1 + len(fits) // 8)):
                weights[i] += self.ASSISTANT_ARCHETYPE_WEIGHT if assistant else self.ARCHETYPE_WEIGHT
            self._shared[key] = weights
        weights = list(self._shared[key])
        for i in random.Random(f"{self.user_key}:{name}").sample(fits, min(len(fits), 2)):
            weights[i] += self.ASSISTANT_PERSONAL_WEIGHT if assistant else self.PERSONAL_WEIGHT
        return weights

    def _table(self, name: str, entries: tuple[str, ...],
               offered: frozenset[str]) -> tuple[list[str], list[float], list[str]]:
        """Texts usable with `offered` tags, their cumulative weights, and those of them that
        fit every register (what a cued pick draws from, so it is the same for everyone)."""
        weights = self._weights(name, entries)
        texts, cum, neutral, total = [], [], [], 0.0
        for (tags, text), w in zip(self._entries(name, entries), weights):
            if w > 0 and all(t in offered for t in tags - {"f", "c"}):
                total += w
                texts.append(text)
                cum.append(total)
                if not tags & {"f", "c"}:
                    neutral.append(text)
        if not texts:
            raise ValueError(f"phrase bank {name!r} has no entry for tags {sorted(offered)}")
        return texts, cum, neutral or texts

    def pick(self, rng: random.Random, name: str, entries: tuple[str, ...],
             offered: Iterable[str] = ()) -> str:
        """One entry of bank `entries` (called `name`) whose requirement tags are all in
        `offered`, drawn with this user's weights."""
        tables = self._tables.get(name)
        if tables is None:
            self._entries(name, entries)
            tables = self._tables[name] = {}
        # only the tags this bank cares about, so one table serves many contexts
        key = self._requirements[name].intersection(offered) if offered else _NO_TAGS
        if key not in tables:
            tables[key] = self._table(name, entries, key)
        texts, cum, neutral = tables[key]
        if _assistant_bank(name):
            if self.cue is not None and rng.random() < self.CUE_SHARE:
                # the same request gets the same wording from the assistant, whoever asks:
                # the house shape for most kinds of request, another fixed entry for the rest
                h = zlib.crc32(f"{name}:{self.cue}".encode())
                return texts[0] if h % 1000 < self.HOUSE_SHARE * 1000 else neutral[h % len(neutral)]
            if rng.random() < self.HOUSE_SHARE:  # the bank's first entry: one shape for every device
                return texts[0]
        # what rng.choices(texts, cum_weights=cum) does, without its per-call overhead
        return texts[bisect.bisect_right(cum, rng.random() * cum[-1], 0, len(cum) - 1)]

    @contextmanager
    def cued(self, cue: str):
        """Word assistant text for a request of kind `cue` (see `CUE_SHARE`)."""
        outer, self.cue = self.cue, cue
        try:
            yield self
        finally:
            self.cue = outer


def _assistant_bank(name: str) -> bool:
    """Banks the assistant's text draws from: every bank not named `user_*`."""
    return not name.startswith("user_")


def user_key_of(name: str, population: str, index: int) -> str:
    """The seed string of one persona's personal favourites (population-specific)."""
    return f"{population}:{index}:{name}"
