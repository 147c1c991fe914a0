"""The planner's words: data apart from the rules that read them (a new word is one line here).

The layer lexicon (word -> layer and weight), bigrams, setting words, stopwords, adjectives, colour names, number
words, abbreviations and default negative terms, and the word lists of the tidy-up rules. Each list is plain text,
one word or phrase per whitespace-separated entry, so it can grow without touching a rule.
"""
from __future__ import annotations


def _entries(spec: str) -> tuple[str, ...]:
    return tuple(w for w in spec.split() if w)


DANGLING_END_WORDS: frozenset[str] = frozenset(_entries("""
    a an the
    and or but nor yet so plus while whereas
    of in on at to by for from with into onto over under beneath below above behind beyond past through across
    toward towards against among amid amidst between within without upon near along around
    its their his our your my whose which that
"""))
"""Words a layer prompt's phrase must not end on: once cue words and style terms are cut out they are leftovers
("a girl wading, neon cyan and" -> "a girl wading")."""

DANGLING_START_WORDS: frozenset[str] = frozenset(_entries("""
    and or but nor yet so plus while whereas then also
"""))
"""Words a phrase must not start with: a conjunction left from the clause it was cut out of."""

LOCATIVE_LEADS: tuple[str, ...] = _entries("""
    beyond behind past
""")
"""Prepositions that open a leading "beyond the gate," clause placing what follows far back."""

LOCATIVE_ADVERBS: tuple[str, ...] = _entries("""
    far way farther further high deep
""")
"""Adverbs that may stand before a locative lead ("far beyond the gate")."""

TRAILING_PLACE_PREPOSITIONS: frozenset[str] = frozenset(_entries("""
    over across through above along around behind beneath below
"""))
"""After a style term that opens a phrase, these start where that light or air is ("mist over the pines"): the
phrase stays one style term instead of leaving "over the pines" in a layer."""

ATMOSPHERE_NOUNS: tuple[str, ...] = _entries("""
    moonlight sunlight starlight candlelight lamplight firelight torchlight twilight daylight
    fog mist haze smog
""")
"""Light and air words shared by every layer (one scene, one light), like colour grades and palettes."""

ATMOSPHERE_ADJECTIVES: tuple[str, ...] = _entries("""
    soft cold cool warm pale silver silvery golden thin thick dense heavy low rolling drifting blue grey gray
    white faint hazy eerie damp morning evening night
""")
"""Adjectives kept with an atmosphere noun ("soft fog", "cold moonlight")."""

ATMOSPHERE_PREPOSITIONS: tuple[str, ...] = _entries("""
    under in beneath through amid amidst
""")
"""Prepositions cut out with an atmosphere phrase ("a ruined aqueduct under moonlight")."""


_LEXICON_SPEC: dict[str, dict[float, str]] = {
    "background": {
        1.5: """architecture architectural building tower castle palace cathedral temple church chapel
            monastery mosque hall chamber interior room library archive planetarium observatory city
            cityscape skyline landscape mountain valley forest jungle ocean sea sky horizon desert canyon cave
            cavern ruin facade colonnade nave dome vault atrium rotunda corridor hallway courtyard garden
            street alley bridge skyscraper spire ziggurat pyramid amphitheater amphitheatre arena stadium
            scenery vista panorama backdrop environment setting distant far-off ballroom theater theatre
            museum gallery station harbor harbour village town lighthouse windmill barn farm castle kitchen
            bedroom studio office classroom church temple shrine pagoda market plaza square lobby attic
            basement cellar greenhouse warehouse factory ship harbor port dock pier mansion manor cabin""",
        1.0: """wall ceiling floor arch archway balcony column pillar buttress staircase stair stairway
            window door doorway portal gate scaffolding shelf shelve bookcase bookshelf cabinet chandelier
            curtain drape tile mosaic fresco mural brick beam rafter rib tier gallery orrery star planet
            moon sun cloud tree hill field river lake waterfall lagoon beach shore island house home hut
            cottage banner flag stage sign signage facade terrace roof rooftop battlement rampart fountain
            throne-room altar organ pipe sunset sunrise dawn dusk twilight aurora meadow cliff glacier
            sculpture statue tapestry skylight alcove niche crypt dungeon tunnel lantern-star""",
        0.5: """stone marble bureaucracy monumental towering vast immense upward overhead enormous colossal
            alphabet clockwork constellation track dressing-room world universe cosmos space""",
    },
    "midground": {
        1.5: """figure person people man woman men women girl boy child children kid human humanoid character
            protagonist hero heroine subject couple pair twin lover dreamer dancer athlete guardian warrior
            knight soldier king queen prince princess god goddess angel demon witch wizard mage priest monk
            nun saint sage traveler traveller wanderer pilgrim explorer astronaut robot android cyborg
            creature monster giant lady gentleman maiden bride groom mother father family crowd musician
            singer actor actress clown jester harlequin acrobat celebrant performer mourner baby infant
            animal cat dog fox wolf lion tiger horse deer stag bear owl raven crow eagle dragon unicorn
            whale serpent snake self portrait fisherman fishermen sailor farmer merchant scholar student teacher
            doctor nurse chef pirate ninja samurai viking elf dwarf orc fairy mermaid vampire ghost zombie cowboy
            detective scientist artist painter poet writer reader queen emperor empress soldier archer hunter
            shepherd beggar thief assassin gladiator samurai geisha ballerina violinist pianist drummer
            grandmother grandfather boyfriend girlfriend wife husband son daughter policeman firefighter
            skateboarder surfer rider horseman horsewoman swordsman swordswoman sorcerer sorceress oracle
            prophet shaman hermit nomad refugee worker miner blacksmith knight-errant rabbit hare mouse rat
            squirrel bird-woman cat-woman octopus jellyfish butterfly-woman kitten puppy cow sheep goat pig
            elephant giraffe zebra monkey ape gorilla panda koala penguin swan heron crane peacock parrot
            dolphin shark turtle frog lizard crocodile dinosaur phoenix griffin centaur minotaur sphinx golem
            automaton puppet marionette doll mannequin statue-like""",
        1.0: """body skin face head hair hand arm forearm finger fingertip shoulder chest torso ribcage leg
            foot feet heel ankle knee hip waist neck chin lip mouth cheek brow gaze stare posture pose
            stance anatomy silhouette limb sternum palm wrist spine breath smile expression nude naked bare
            bare-shouldered shirtless dressed wearing clothed costume coat dress gown robe cloak cape armor
            armour tunic veil laurel prosthetic vein tattoo wound stride stand standing sit sitting lean
            leaning kneel kneeling dancing hold holding held embrace embracing kiss kissing reaching asleep
            walking running flying gesture sweat tear""",
        0.5: """eye heart crown halo twin""",
        0.3: """they their them he his him she her herself himself themselves""",
    },
    "foreground": {
        1.5: """debris particle confetti shard dust mote ember spark petal ash crumb rubble fragment splinter
            droplet bubble bokeh litter clutter trinket prop clue scrap foreground""",
        1.0: """glass mask ticket letter envelope page paper ink feather leave leaf thorn coin key seal wax
            token chain link gear cog wire pin needle ribbon string sand hourglass dice card dossier folder
            stamp stamper tool instrument jewel jewelry jewellery gem bead pearl candle bottle cup goblet
            shell pebble twig origami butterfly moth insect firefly bee scattered spilled strewn occlude
            occludes lens tassel astrolabe incense smoke trinket medal handprint calligraphy scroll book
            tag quill compass lock padlock ring""",
        0.7: """parchment mirror fabric fold cloth floating bird corner""",
        0.5: """drifting suspended weightless edge bottom camera close nearby tiny spilling stacked pile heap
            fly haze mist fog glitter""",
        0.3: """thread velvet small miniature broken hovering lower near""",
    },
}


def _lexicon(spec: dict[str, dict[float, str]]) -> dict[str, list[tuple[str, float]]]:
    """Word -> [(layer, weight)], in the order of the spec."""
    lexicon: dict[str, list[tuple[str, float]]] = {}
    for layer, groups in spec.items():
        for weight, words in groups.items():
            for w in _entries(words):
                entries = lexicon.setdefault(w, [])
                same = [e for e in entries if e[0] == layer]
                if not same:
                    entries.append((layer, weight))
                elif same[0][1] < weight:  # a word listed twice keeps its higher weight
                    entries[entries.index(same[0])] = (layer, weight)
    return lexicon


_LEXICON: dict[str, list[tuple[str, float]]] = _lexicon(_LEXICON_SPEC)

_BIGRAMS: dict[str, list[tuple[str, float]]] = {
    "dust mote": [("foreground", 1.0)], "filing cabinet": [("background", 1.0)],
    "stage flat": [("background", 1.5)], "love letter": [("foreground", 1.0)],
    "theater mask": [("foreground", 0.5)], "theatre mask": [("foreground", 0.5)],
    "theater ticket": [("foreground", 0.5)], "street sign": [("background", 0.5)],
    "paper scrap": [("foreground", 0.5)], "broken glass": [("foreground", 0.5)],
    "glass shard": [("foreground", 0.5)], "star chart": [("foreground", 0.5)],
    "lower frame": [("foreground", 1.0)], "every corner": [("foreground", 0.5)],
    "floor tile": [("background", 0.5)], "cathedral rib": [("background", 0.5)],
    "human figure": [("midground", 0.5)], "city gate": [("background", 0.5)],
}

_OUTDOOR = set(_entries("""landscape mountain valley forest jungle ocean sea sky horizon desert canyon city cityscape
    skyline street alley bridge garden meadow cliff glacier field hill river lake beach shore island village
    town sunset sunrise dawn dusk aurora"""))

_INDOOR = set(_entries("""hall room chamber interior ceiling vault archive library palace cathedral church temple
    planetarium theater theatre ballroom corridor gallery museum attic cellar crypt nave balcony staircase stair
    office studio workshop observatory"""))


_STOPWORDS = set(_entries("""a an the and or but yet while whereas of in on at to by for from with as into onto over
    under than then so is are was were be been being it its this that these those there their them they he she
    his her him we our you your i my me all each every some any both either neither no not only just very
    too also like such what which who whom whose where when how why if because though although until upon
    about above below between through during before after around across against along among off out up
    down near far here one everything everywhere something somewhere anything"""))


_COLOR_ALIASES: dict[str, str] = {
    "gold": "gold", "golden": "gold", "gilded": "gold", "gilt": "gold", "sunrise gold": "sunrise gold",
    "amber": "amber", "yellow": "yellow", "ochre": "ochre", "orange": "orange", "copper": "copper",
    "bronze": "bronze", "brass": "brass", "rust": "rust", "red": "red", "carmine": "carmine",
    "crimson": "crimson", "scarlet": "scarlet", "vermilion": "vermilion", "vermillion": "vermilion",
    "ruby": "ruby", "burgundy": "burgundy", "maroon": "maroon", "pink": "pink", "magenta": "magenta",
    "fuchsia": "magenta", "purple": "purple", "violet": "violet", "lavender": "lavender", "indigo": "indigo",
    "blue": "blue", "velvet blue": "velvet blue", "midnight blue": "midnight blue", "midnight": "midnight blue",
    "navy": "navy", "cobalt": "cobalt", "azure": "azure", "sapphire": "sapphire", "sky blue": "sky blue",
    "cyan": "cyan", "teal": "teal", "turquoise": "turquoise", "green": "green", "emerald": "emerald",
    "jade": "jade", "olive": "olive", "silver": "silver", "silvery": "silver", "chrome": "chrome",
    "white": "white", "ivory": "ivory", "black": "black", "ebony": "ebony", "grey": "grey", "gray": "grey",
    "brown": "brown", "sepia": "sepia", "umber": "umber",
}


_NUMBER_WORDS = {"one": 1, "a": 1, "an": 1, "single": 1, "lone": 1, "two": 2, "both": 2, "three": 3, "four": 4,
                 "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "several": 3, "many": 4}


_ABBREVIATIONS = ("e.g", "i.e", "vs", "mr", "mrs", "ms", "dr", "st", "etc", "approx", "no", "fig")


_ADJECTIVES = set(_entries("""tiny small little big large huge giant vast minuscule miniature old young ancient dark
    bright deep dense thick thin long short tall soft hard warm cool cold hot wet dry rich pale sensual triumphant
    intimate frozen calm immovable single quiet loud strange weird eerie lush rough smooth sharp blunt heavy light
    gentle fierce wild serene silent lonely lone bare empty full broken shattered torn worn new faint subtle bold
    vivid stark crisp hazy misty golden silvery velvety glossy matte ornate delicate fragile massive enormous
    immense colossal monumental towering grand great mighty humble noble regal sacred holy ruined twisted tangled"""))
_NOUN_EXCEPTIONS = set(_entries("""metal crystal music moment element garment relic servant festival pedestal signal
    animal mineral ritual journal canal medal rival arrival seed need bed shed sled reed steed thread bread head
    hundred""")) | {w for w in _LEXICON}
_ADJ_SUFFIXES = ("al", "ous", "ive", "ic", "ful", "less", "able", "ible", "ant", "ent", "ed", "ish", "ary")


_NEGATIVES: dict[str, tuple[str, ...]] = {
    "background": ("people", "person", "figure", "character", "face", "hands", "crowd", "foreground debris",
                   "objects close to the lens", "clutter in front", "text", "watermark", "blurry", "lowres"),
    "midground": ("background scenery", "landscape", "architecture", "room interior", "busy backdrop",
                  "foreground debris", "extra limbs", "deformed hands", "text", "watermark", "blurry", "lowres"),
    "foreground": ("background scenery", "landscape", "architecture", "room interior", "people", "figure", "face",
                   "busy backdrop", "text", "watermark", "blurry", "lowres"),
}
