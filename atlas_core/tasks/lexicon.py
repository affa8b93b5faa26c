"""Curated word lists and facts for the task suite, written by hand (keep every fact true).

Entries whose answer is not a single token under a tokenizer are simply never drawn as a next-token
probe (the generators check SmolLM2's tokenizer); they still serve the training splits.
"""

from __future__ import annotations

# (country, capital, continent or None, main language or None). None where the fact is ambiguous.
COUNTRIES: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("France", "Paris", "Europe", "French"),
    ("Germany", "Berlin", "Europe", "German"),
    ("Italy", "Rome", "Europe", "Italian"),
    ("Spain", "Madrid", "Europe", "Spanish"),
    ("Portugal", "Lisbon", "Europe", "Portuguese"),
    ("Greece", "Athens", "Europe", "Greek"),
    ("Poland", "Warsaw", "Europe", "Polish"),
    ("Russia", "Moscow", None, "Russian"),
    ("Ukraine", "Kyiv", "Europe", "Ukrainian"),
    ("Austria", "Vienna", "Europe", "German"),
    ("Hungary", "Budapest", "Europe", "Hungarian"),
    ("Sweden", "Stockholm", "Europe", "Swedish"),
    ("Norway", "Oslo", "Europe", "Norwegian"),
    ("Finland", "Helsinki", "Europe", "Finnish"),
    ("Denmark", "Copenhagen", "Europe", "Danish"),
    ("Ireland", "Dublin", "Europe", None),
    ("the Netherlands", "Amsterdam", "Europe", "Dutch"),
    ("Belgium", "Brussels", "Europe", None),
    ("Switzerland", "Bern", "Europe", None),
    ("Romania", "Bucharest", "Europe", "Romanian"),
    ("Bulgaria", "Sofia", "Europe", "Bulgarian"),
    ("Serbia", "Belgrade", "Europe", "Serbian"),
    ("Croatia", "Zagreb", "Europe", "Croatian"),
    ("Iceland", "Reykjavik", "Europe", "Icelandic"),
    ("Latvia", "Riga", "Europe", "Latvian"),
    ("Lithuania", "Vilnius", "Europe", "Lithuanian"),
    ("Estonia", "Tallinn", "Europe", "Estonian"),
    ("Slovakia", "Bratislava", "Europe", "Slovak"),
    ("Slovenia", "Ljubljana", "Europe", "Slovenian"),
    ("Albania", "Tirana", "Europe", "Albanian"),
    ("England", "London", "Europe", "English"),
    ("Scotland", "Edinburgh", "Europe", None),
    ("Malta", "Valletta", "Europe", None),
    ("Japan", "Tokyo", "Asia", "Japanese"),
    ("China", "Beijing", "Asia", "Chinese"),
    ("India", "New Delhi", "Asia", None),
    ("South Korea", "Seoul", "Asia", "Korean"),
    ("Thailand", "Bangkok", "Asia", "Thai"),
    ("Vietnam", "Hanoi", "Asia", "Vietnamese"),
    ("Indonesia", "Jakarta", "Asia", "Indonesian"),
    ("the Philippines", "Manila", "Asia", None),
    ("Malaysia", "Kuala Lumpur", "Asia", "Malay"),
    ("Pakistan", "Islamabad", "Asia", None),
    ("Bangladesh", "Dhaka", "Asia", "Bengali"),
    ("Nepal", "Kathmandu", "Asia", "Nepali"),
    ("Iran", "Tehran", "Asia", "Persian"),
    ("Iraq", "Baghdad", "Asia", "Arabic"),
    ("Syria", "Damascus", "Asia", "Arabic"),
    ("Turkey", "Ankara", None, "Turkish"),
    ("Saudi Arabia", "Riyadh", "Asia", "Arabic"),
    ("Afghanistan", "Kabul", "Asia", None),
    ("Mongolia", "Ulaanbaatar", "Asia", "Mongolian"),
    ("Cambodia", "Phnom Penh", "Asia", "Khmer"),
    ("Laos", "Vientiane", "Asia", "Lao"),
    ("Qatar", "Doha", "Asia", "Arabic"),
    ("Jordan", "Amman", "Asia", "Arabic"),
    ("Lebanon", "Beirut", "Asia", "Arabic"),
    ("Oman", "Muscat", "Asia", "Arabic"),
    ("Armenia", "Yerevan", "Asia", "Armenian"),
    ("Uzbekistan", "Tashkent", "Asia", "Uzbek"),
    ("Kazakhstan", "Astana", "Asia", None),
    ("Egypt", "Cairo", "Africa", "Arabic"),
    ("Kenya", "Nairobi", "Africa", None),
    ("Nigeria", "Abuja", "Africa", None),
    ("Ethiopia", "Addis Ababa", "Africa", None),
    ("Ghana", "Accra", "Africa", None),
    ("Morocco", "Rabat", "Africa", None),
    ("Algeria", "Algiers", "Africa", None),
    ("Tunisia", "Tunis", "Africa", "Arabic"),
    ("Senegal", "Dakar", "Africa", "French"),
    ("Uganda", "Kampala", "Africa", None),
    ("Zimbabwe", "Harare", "Africa", None),
    ("Sudan", "Khartoum", "Africa", "Arabic"),
    ("Libya", "Tripoli", "Africa", "Arabic"),
    ("Angola", "Luanda", "Africa", "Portuguese"),
    ("Mozambique", "Maputo", "Africa", "Portuguese"),
    ("Canada", "Ottawa", "North America", None),
    ("Mexico", "Mexico City", "North America", "Spanish"),
    ("Cuba", "Havana", "North America", "Spanish"),
    ("Jamaica", "Kingston", "North America", "English"),
    ("Brazil", "Brasília", "South America", "Portuguese"),
    ("Argentina", "Buenos Aires", "South America", "Spanish"),
    ("Chile", "Santiago", "South America", "Spanish"),
    ("Peru", "Lima", "South America", "Spanish"),
    ("Colombia", "Bogotá", "South America", "Spanish"),
    ("Venezuela", "Caracas", "South America", "Spanish"),
    ("Ecuador", "Quito", "South America", "Spanish"),
    ("Uruguay", "Montevideo", "South America", "Spanish"),
    ("Australia", "Canberra", "Oceania", "English"),
    ("New Zealand", "Wellington", "Oceania", "English"),
    ("Fiji", "Suva", "Oceania", None),
)

# (landmark, city it stands in)
LANDMARKS: tuple[tuple[str, str], ...] = (
    ("the Eiffel Tower", "Paris"), ("the Louvre", "Paris"), ("the Colosseum", "Rome"),
    ("the Pantheon", "Rome"), ("Big Ben", "London"), ("Buckingham Palace", "London"),
    ("Tower Bridge", "London"), ("the Brandenburg Gate", "Berlin"), ("the Kremlin", "Moscow"),
    ("Red Square", "Moscow"), ("the Acropolis", "Athens"), ("the Parthenon", "Athens"),
    ("the Sagrada Familia", "Barcelona"), ("the Forbidden City", "Beijing"), ("the Taj Mahal", "Agra"),
    ("the Space Needle", "Seattle"), ("the Burj Khalifa", "Dubai"), ("the Blue Mosque", "Istanbul"),
    ("the Hagia Sophia", "Istanbul"), ("the CN Tower", "Toronto"), ("the Rialto Bridge", "Venice"),
    ("the Prado Museum", "Madrid"), ("Charles Bridge", "Prague"), ("the Atomium", "Brussels"),
    ("the Uffizi Gallery", "Florence"), ("the Alhambra", "Granada"), ("the Little Mermaid statue", "Copenhagen"),
    ("the Sydney Opera House", "Sydney"), ("the Leaning Tower", "Pisa"),
)

NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Emma", "James", "Sarah", "David", "Anna", "Michael", "Laura", "Peter",
    "Lisa", "Mark", "Kate", "Paul", "Jane", "Tom", "Rachel", "Daniel", "Sophie", "Chris", "Emily", "Steve",
    "Helen", "George", "Lucy", "Robert", "Grace", "Henry", "Julia", "Frank", "Claire", "Adam", "Rose",
    "Jack", "Amy", "Sam", "Linda", "Eric", "Nancy", "Kevin", "Susan", "Brian", "Karen", "Jason", "Diana",
    "Simon", "Martin", "Victor", "Oscar", "Hannah", "Ruth", "Carl", "Max", "Leo", "Ben", "Ella",
)

# Concrete nouns (singular) used as filler words, copy lists and induction tokens.
NOUNS: tuple[str, ...] = (
    "apple", "river", "stone", "cloud", "table", "horse", "garden", "window", "bottle", "candle", "mirror",
    "pencil", "forest", "bridge", "island", "letter", "basket", "carpet", "ladder", "rabbit", "tiger",
    "engine", "castle", "market", "pocket", "silver", "winter", "summer", "doctor", "farmer", "hammer",
    "button", "camera", "circle", "rocket", "planet", "desert", "valley", "ocean", "lemon", "orange",
    "tomato", "potato", "cookie", "pillow", "blanket", "jacket", "wallet", "ticket", "kitchen", "school",
    "church", "village", "station", "harbor", "tunnel", "tower", "wheel", "chair", "house", "train",
    "plane", "boat", "truck", "phone", "clock", "lamp", "door", "book", "tree", "bird", "fish", "shoe",
    "coat", "ring", "cup", "box", "bag", "car", "dog", "cat", "hat", "key", "map", "pen", "egg", "bed",
)

COLORS: tuple[str, ...] = ("red", "blue", "green", "black", "white", "yellow", "brown", "pink", "gray", "purple")
CITIES: tuple[str, ...] = tuple(sorted({c for _, c, _, _ in COUNTRIES if " " not in c} | {c for _, c in LANDMARKS}))
PETS: tuple[str, ...] = ("dog", "cat", "fish", "bird", "horse", "rabbit", "snake", "mouse")
JOBS: tuple[str, ...] = ("doctor", "teacher", "farmer", "lawyer", "nurse", "pilot", "writer", "chef", "artist", "baker")

# (singular, plural) nouns for subject-verb agreement
AGREE_NOUNS: tuple[tuple[str, str], ...] = (
    ("key", "keys"), ("dog", "dogs"), ("cat", "cats"), ("book", "books"), ("car", "cars"), ("house", "houses"),
    ("teacher", "teachers"), ("student", "students"), ("doctor", "doctors"), ("farmer", "farmers"),
    ("girl", "girls"), ("boy", "boys"), ("song", "songs"), ("window", "windows"), ("door", "doors"),
    ("tree", "trees"), ("flower", "flowers"), ("bird", "birds"), ("player", "players"), ("road", "roads"),
    ("letter", "letters"), ("picture", "pictures"), ("friend", "friends"), ("child", "children"),
    ("man", "men"), ("woman", "women"), ("author", "authors"), ("worker", "workers"), ("singer", "singers"),
    ("lamp", "lamps"), ("table", "tables"), ("chair", "chairs"), ("river", "rivers"), ("bridge", "bridges"),
    ("painting", "paintings"), ("machine", "machines"), ("officer", "officers"), ("nurse", "nurses"),
    ("pilot", "pilots"), ("manager", "managers"), ("horse", "horses"), ("computer", "computers"),
)

ANTONYMS: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"), ("good", "bad"),
    ("old", "new"), ("high", "low"), ("long", "short"), ("light", "dark"), ("open", "closed"), ("rich", "poor"),
    ("hard", "soft"), ("early", "late"), ("strong", "weak"), ("wet", "dry"), ("full", "empty"),
    ("heavy", "light"), ("thick", "thin"), ("clean", "dirty"), ("true", "false"), ("young", "old"),
    ("left", "right"), ("inside", "outside"), ("above", "below"), ("before", "after"), ("first", "last"),
    ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("give", "take"), ("start", "finish"),
    ("love", "hate"), ("day", "night"), ("north", "south"), ("east", "west"), ("black", "white"),
    ("yes", "no"), ("always", "never"), ("more", "less"), ("near", "far"), ("safe", "dangerous"),
    ("easy", "difficult"), ("cheap", "expensive"), ("quiet", "loud"), ("sweet", "sour"), ("wide", "narrow"),
    ("deep", "shallow"), ("friend", "enemy"), ("top", "bottom"), ("front", "back"), ("male", "female"),
    ("alive", "dead"), ("question", "answer"), ("increase", "decrease"), ("accept", "reject"),
    ("arrive", "leave"), ("remember", "forget"), ("success", "failure"), ("war", "peace"), ("in", "out"),
    ("on", "off"), ("best", "worst"), ("laugh", "cry"), ("smooth", "rough"), ("brave", "afraid"),
)

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)
ORDINALS: tuple[str, ...] = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
DAYS: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS: tuple[str, ...] = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)
LETTERS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")

# Words that differ from another word in exactly one letter (deobfuscation pairs are found among these).
SPELL_WORDS: tuple[str, ...] = (
    "cat", "cut", "cot", "hat", "hot", "hit", "hut", "bat", "bet", "but", "bit", "pin", "pen", "pan", "pun",
    "man", "men", "map", "mop", "cap", "cup", "cop", "dog", "dig", "log", "leg", "bag", "big", "bug", "beg",
    "red", "rod", "rid", "sun", "son", "sin", "ten", "tin", "ton", "fan", "fun", "fin", "net", "nut", "not",
    "plane", "plant", "house", "horse", "mouse", "moose", "cold", "gold", "bold", "hold", "told", "fold",
    "bread", "break", "bring", "brine", "light", "night", "right", "fight", "sight", "might", "tight",
    "cake", "lake", "make", "take", "bake", "wake", "rake", "game", "came", "name", "same", "fame", "lame",
    "ball", "bell", "bill", "bull", "fall", "fill", "full", "hall", "hill", "hull", "wall", "will", "well",
    "card", "cart", "care", "core", "cure", "word", "work", "worm", "warm", "farm", "form", "fork", "pork",
    "rain", "ruin", "gain", "pain", "main", "mail", "nail", "tail", "tall", "talk", "walk", "wall", "milk",
    "silk", "sink", "pink", "link", "line", "lime", "time", "tide", "ride", "rice", "nice", "mice", "dice",
    "stone", "store", "stare", "share", "shape", "shade", "spade", "space", "place", "plate", "slate",
    "water", "wafer", "paper", "caper", "cider", "rider", "wider", "tiger", "timer", "tower", "power",
    "lower", "mower", "sower", "money", "honey", "river", "rover", "cover", "lover", "mover",
)

# Neutral natural sentences, combined deterministically into filler context for medium/long buckets.
FILLER: tuple[str, ...] = (
    "The morning was quiet, and a light rain fell over the rooftops of the old town.",
    "Most of the shops on the main street opened a little after nine.",
    "A delivery van stopped outside the bakery and two men carried in sacks of flour.",
    "In the park, a group of children was playing football while their parents talked on the benches.",
    "The library had recently been repainted, and the smell of fresh paint still lingered in the halls.",
    "Somewhere in the distance a train whistle sounded, long and low.",
    "The river ran high that week after several days of storms in the hills.",
    "An old man fed the pigeons near the fountain, as he did every day.",
    "The museum had extended its opening hours for the summer season.",
    "At the corner café, the owner wrote the day's specials on a small chalkboard.",
    "A cool breeze came in from the sea and carried the smell of salt.",
    "The committee met on Thursday to discuss the budget for the coming year.",
    "Several new houses were being built on the edge of the village.",
    "The bus was late again, and the passengers waited patiently under the shelter.",
    "In the evening, the streetlights came on one by one along the avenue.",
    "The garden behind the house was full of tomatoes, beans and sunflowers.",
    "A small boat drifted slowly past the harbor wall.",
    "The teacher asked the class to read the next chapter before Monday.",
    "Snow had covered the mountain paths, so the hikers turned back early.",
    "The market was crowded with people buying fruit, bread and cheese.",
    "She kept a notebook in which she wrote down everything she saw on her walks.",
    "The old bridge had been closed for repairs since the spring.",
    "A cat slept in the sunny window of the bookshop, ignoring the customers.",
    "The factory at the end of the road had stopped working many years ago.",
    "Everyone agreed that the concert in the square had been a great success.",
    "The radio played soft music while the kitchen filled with the smell of soup.",
    "It took almost an hour to drive across the city during the rush.",
    "The farmers were worried about the dry weather and the late harvest.",
    "On the hill above the town stood the ruins of a medieval castle.",
    "The children collected shells on the beach and counted them in the afternoon.",
    "A new exhibition of paintings opened at the gallery last weekend.",
    "The clock on the church tower had not shown the right time for years.",
    "He spent the afternoon fixing the fence that the wind had knocked down.",
    "The hotel lobby was quiet except for the sound of a vacuum cleaner.",
    "Many visitors came to the festival, and the streets were decorated with flags.",
    "The forest path was muddy, and the trees dripped with water.",
    "The report was long, but most of it described ordinary things.",
    "A dog barked twice and then went back to sleep on the porch.",
    "The town council planned to plant more trees along the river.",
    "They ate lunch outside, although the sky looked grey and uncertain.",
    "The train station had a small waiting room with wooden benches.",
    "During the holidays, the school buildings stood empty and silent.",
    "The workers finished painting the wall just before the sun went down.",
    "Fresh bread was sold every morning from a stall near the bus stop.",
    "The lake froze early that year, and people went skating on it in December.",
    "A postman cycled down the lane with a bag full of letters.",
    "The mayor gave a short speech and then cut the ribbon.",
    "Nobody remembered exactly when the old well had been dug.",
)

SENTIMENT_ADJ: tuple[tuple[str, str], ...] = (
    ("wonderful", "terrible"), ("excellent", "awful"), ("great", "bad"), ("delightful", "dreadful"),
    ("pleasant", "unpleasant"), ("amazing", "disappointing"), ("fantastic", "horrible"), ("lovely", "nasty"),
    ("brilliant", "poor"), ("superb", "mediocre"),
)
SENTIMENT_SUBJ: tuple[str, ...] = (
    "The movie", "The meal", "The hotel", "The concert", "The service", "The book", "The trip", "The game",
    "The weather", "The party", "The lecture", "The new phone", "Our vacation", "The restaurant",
    "The performance", "The coffee",
)
SENTIMENT_FRAMES: tuple[str, ...] = (
    "{s} was {a}.", "{s} was truly {a}, and I told all my friends.", "Honestly, {s_l} was {a}.",
    "I thought {s_l} was {a}.", "Everyone agreed that {s_l} was {a}.",
)

# (formal, informal) phrasing pairs for the same content; frames add variation.
FORMALITY: tuple[tuple[str, str], ...] = (
    ("Good morning, how are you today?", "Hey, how's it going?"),
    ("I would like to request a copy of the report.", "Can I get a copy of the report?"),
    ("Thank you very much for your assistance.", "Thanks a lot for the help."),
    ("Please let me know if you require anything further.", "Let me know if you need anything else."),
    ("I regret to inform you that the meeting has been cancelled.", "Sorry, the meeting's off."),
    ("Could you kindly send me the documents?", "Can you send me the stuff?"),
    ("I am afraid I cannot attend the event.", "I can't make it to the thing."),
    ("We appreciate your patience in this matter.", "Thanks for hanging in there."),
    ("I would be grateful for your advice.", "I'd love some tips."),
    ("Kindly confirm your attendance by Friday.", "Let me know by Friday if you're coming."),
    ("It was a pleasure to make your acquaintance.", "Nice meeting you!"),
    ("I apologise for the inconvenience caused.", "Sorry about the mess."),
    ("Please find the attached file.", "Here's the file."),
    ("Shall we reconvene tomorrow afternoon?", "Wanna catch up tomorrow?"),
    ("I do not understand your question.", "I don't get what you mean."),
    ("The results were highly satisfactory.", "The results were pretty awesome."),
    ("I must depart now.", "Gotta go now."),
    ("Would you care to join us for dinner?", "Wanna grab dinner with us?"),
    ("Your prompt response would be appreciated.", "Get back to me quick, okay?"),
    ("I am delighted to accept your invitation.", "Sure, I'm in!"),
    ("Please accept my sincere congratulations.", "Congrats, dude!"),
    ("We are currently investigating the issue.", "We're looking into it."),
    ("I shall contact you at a later date.", "I'll hit you up later."),
    ("The children are extremely tired.", "The kids are super wiped out."),
    ("That is absolutely correct.", "Yep, that's right."),
)
FORMALITY_FRAMES: tuple[str, ...] = ("{x}", "{name} said: \"{x}\"", "Message from {name}: {x}", "{name} wrote, \"{x}\"")

SURNAMES: tuple[str, ...] = (
    "Carter", "Miller", "Walker", "Turner", "Parker", "Cooper", "Morgan", "Bennett", "Hughes", "Foster",
    "Palmer", "Porter", "Fisher", "Hunter", "Graham", "Spencer", "Wallace", "Marshall", "Stone", "Ward",
    "Brooks", "Price", "Reed", "Bell", "Wood", "Gray", "Fox", "Hill", "Lane", "Cole", "Webb", "Shaw",
)
TITLES: tuple[str, ...] = ("Dr.", "Professor", "Captain", "Judge", "Officer", "Coach")
