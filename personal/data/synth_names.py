"""Names for simulated personas: two disjoint pools, one per population.

The `eval` population draws first names only from `EVAL_NAMES`, the `background`
population only from `BACKGROUND_NAMES`; the pools share no name (checked at import), so no
background persona can be mistaken for an evaluated one — the base model pretrained on the
background population has never seen an evaluated user's name. Names that are also common
words ("Will", "Hope", "Joy", "Dawn", "Sunny") are left out: the name rate counts whole-word
matches, and a name must never look like a setting or a device. Each pool holds more than 200
names, so the default population of 200 has no two users with the same first name.
"""
from __future__ import annotations


def _parse(block: str) -> tuple[tuple[str, str], ...]:
    """'Ethan:m Olivia:f ...' -> (("Ethan", "m"), ("Olivia", "f"), ...)."""
    return tuple(tuple(item.split(":")) for item in block.split())  # type: ignore[misc]


#: (first name, "f" | "m") for the evaluated population.
EVAL_NAMES = _parse("""
Ethan:m Olivia:f Liam:m Emma:f Noah:m Ava:f Lucas:m Mia:f Mason:m Sophia:f Logan:m Isabella:f
Elijah:m Amelia:f Oliver:m Harper:f Aiden:m Evelyn:f Carter:m Abigail:f Daniel:m Emily:f
Matthew:m Ella:f Henry:m Scarlett:f Samuel:m Chloe:f Owen:m Zoe:f Gabriel:m Nora:f Julian:m
Hannah:f Isaac:m Lily:f Levi:m Layla:f Caleb:m Aria:f Nathan:m Riley:f Ryan:m Victoria:f
Adrian:m Penelope:f Aaron:m Hazel:f Thomas:m Aurora:f Charles:m Savannah:f Connor:m Brooklyn:f
Jeremiah:m Claire:f Hector:m Naomi:f Eli:m Ruby:f Colton:m Alice:f Dominic:m Madeline:f
Austin:m Caroline:f Jordan:m Eliana:f Ian:m Valentina:f Adam:m Sadie:f Xavier:m Piper:f
Jose:m Lucia:f Jace:m Camila:f Everett:m Mila:f Declan:m Elena:f Evan:m Maya:f Kayden:m
Quinn:f Parker:m Josephine:f Wesley:m Delilah:f Kai:m Ivy:f Brandon:m Cora:f Vincent:m
Adeline:f Milo:m Margaret:f Micah:m Vivian:f Ramon:m Priya:f Hiroshi:m Aiko:f Mateo:m
Fatima:f Rahul:m Ingrid:f Tobias:m Leila:f Marcus:m Yara:f Rafael:m Nadia:f Felix:m Beatrice:f
Arjun:m Greta:f Emil:m Rosalind:f Ibrahim:m Agnes:f Bruno:m Keiko:f Dmitri:m Lena:f Ansel:m
Marisol:f Kwame:m Ayla:f Lorenzo:m Freya:f Tariq:m Sienna:f Anders:m Thea:f Omar:m Mabel:f
Cedric:m Noelle:f Desmond:m Imogen:f Ezra:m Lucille:f Gideon:m Ottilie:f Rowan:m Beatrix:f
Cecil:m Marigold:f Alistair:m Edith:f Florian:m Yasmin:f Joaquin:m Tamsin:f Soren:m Anneliese:f
Percival:m Leontine:f Emeka:m Chiara:f Benedikt:m Aurelie:f Ruairi:m Katarina:f Vikram:m Shirin:f
Lachlan:m Inga:f Mikael:m Paloma:f Osvaldo:m Ximena:f Teodor:m Zuzanna:f Fabian:m Hilde:f
Cyrus:m Mirela:f Dorian:m Anouska:f Ptolemy:m Elodie:f Jarrah:m Ngozi:f Ravi:m Solveig:f
Stellan:m Tuuli:f Wilhelm:m Zofia:f Bastian:m Carys:f Eamon:m Dagny:f Giorgos:m Halina:f
Ignacio:m Jolien:f Kasimir:m Liesel:f Mathis:m Nerys:f Oisin:m Pernille:f Quentin:m Rosalie:f
""")

#: (first name, "f" | "m") for the background population (pretraining the built-in base).
BACKGROUND_NAMES = _parse("""
Jacob:m Sarah:f James:m Gwen:f Michael:m Rachel:f William:m Laura:f Benjamin:m Megan:f
Alexander:m Jessica:f Sebastian:m Natalie:f Jack:m Allison:f David:m Samantha:f Joseph:m
Anna:f Luke:m Leah:f Andrew:m Audrey:f Joshua:m Stella:f Christopher:m Lucy:f Lincoln:m
Paisley:f Christian:m Skylar:f Jonathan:m Violet:f Cameron:m Bella:f Robert:m Kinsley:f
Andres:m Gemma:f Jaxon:m Kennedy:f Easton:m Ophelia:f Landon:m Willow:f Nolan:m Gianna:f
Hudson:m Eva:f Cooper:m Emilia:f Jason:m Athena:f Silas:m Maria:f Kevin:m Isla:f Tyler:m
Clara:f Justin:m Rylee:f Ashton:m Peyton:f Damian:m Lydia:f Harrison:m Jade:f Victor:m
Arianna:f Preston:m Brielle:f Bentley:m Juliana:f Santiago:m Adalyn:f Axel:m Kaylee:f
Patrick:m Alexa:f Kaiden:m Liliana:f Emmett:m Eden:f George:m Reagan:f Ryder:m Mackenzie:f
Leon:m Jasmine:f Elias:m Morgan:f Luca:m Harriet:f Graham:m Teagan:f Abel:m Molly:f
Nikolai:m Anjali:f Kenji:m Yuki:f Diego:m Amara:f Sanjay:m Astrid:f Casper:m Zainab:f
Jonas:m Elif:f Reuben:m Farah:f Hugo:m Cecilia:f Aleksander:m Marta:f Finn:m Saoirse:f
Nils:m Ines:f Idris:m Oona:f Matthias:m Anouk:f Kofi:m Selma:f Enzo:m Malin:f Yusuf:m
Signe:f Otto:m Leonie:f Basil:m Hattie:f Cormac:m Philippa:f Lars:m Henrietta:f Ambrose:m
Winifred:f Ignatius:m Clementine:f Thaddeus:m Marguerite:f Barnaby:m Seraphina:f
Alaric:m Bronwen:f Caius:m Delphine:f Evander:m Fenella:f Gustav:m Honora:f Isidore:m Jemima:f
Konrad:m Lavinia:f Leopold:m Mireille:f Niall:m Orla:f Piers:m Rhiannon:f Rufus:m Sabine:f
Tiberius:m Ursula:f Valentin:m Wilhelmina:f Xander:m Yvette:f Zoltan:m Annika:f Bertrand:m Celeste:f
Dashiell:m Esme:f Ferdinand:m Gisela:f Hamish:m Iona:f Jasper:m Kerensa:f Lucian:m Magdalena:f
Nikos:m Odile:f Pascal:m Romilly:f Sylvester:m Tabitha:f Ulrich:m Verity:f Wolfgang:m Xenia:f
Yannick:m Zinnia:f Aurelio:m Brigitte:f Corentin:m Dorothea:f Emrys:m Flavia:f Gerrit:m Helga:f
""")

#: Family names, shared by both populations (the first name is what makes a person distinct).
SURNAMES = tuple("""
Clarke Nguyen Patel Moreno Schmidt Okafor Tanaka Rossi Kowalski Andersson Murphy Dubois
Fischer Silva Kim Haddad Novak Jensen Costa Walsh Bauer Ivanova Mendes Lindqvist Reyes
OConnor Yamamoto Fernandez Larsen Mwangi Hughes Carter Brooks Bennett Foster Hayes Price
Sullivan Russell Griffin Wallace Chen Singh Ali Garcia Martin Thompson Wright Lopez Hill
Scott Green Adams Baker Nelson Mitchell Roberts Turner Phillips Campbell Parker Evans
Edwards Collins Stewart Morris Rogers Reed Cook Morgan Bell Bailey Cooper Richardson Cox
Howard Ward Torres Peterson Gray Ramirez Watson Kelly Sanders Barnes Ross Henderson Coleman
Jenkins Perry Powell Long Patterson Flores Washington Butler Simmons Bryant Alexander
""".split())

_overlap = {n for n, _ in EVAL_NAMES} & {n for n, _ in BACKGROUND_NAMES}
assert not _overlap, f"name pools must be disjoint, shared: {sorted(_overlap)}"
assert len({n for n, _ in EVAL_NAMES}) == len(EVAL_NAMES), "duplicate name in EVAL_NAMES"
assert len({n for n, _ in BACKGROUND_NAMES}) == len(BACKGROUND_NAMES), "duplicate name in BACKGROUND_NAMES"
