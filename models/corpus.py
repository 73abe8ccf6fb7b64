"""A small built-in English corpus used to train the demo tokenizers locally (no downloads)."""

from __future__ import annotations

import hashlib

CORPUS = """\
The morning was cool and bright, and the city woke slowly. A baker opened the shop on the corner,
and the smell of fresh bread and strong coffee drifted into the street. People walked to work,
children ran to school, and a small dog waited patiently by the door of the cafe.
Hello! How are you today? I am fine, thank you. What would you like to drink? A cup of tea, please.
Could you tell me the way to the station? Go straight ahead, turn left at the bridge, and you will
see it on your right. It takes about ten minutes on foot, or two minutes by bicycle.
The weather report said that it would rain in the afternoon, so she took an umbrella and a warm
jacket. Clouds gathered over the hills, the wind grew stronger, and the first drops fell at noon.
By evening the sky had cleared again, and the stars were shining above the quiet river.

A computer is a machine that follows instructions. A program is a list of those instructions,
written in a language that people can read and that the machine can translate into simple steps.
Good programs are small, clear and well tested. When something goes wrong, an engineer reads the
error message, looks at the logs, writes a test that fails, and then fixes the code until the test
passes. Servers answer requests over the network; a gateway routes each request to the right model,
and a batching queue groups several requests together so that the hardware is used efficiently.
Latency is the time a single request takes; throughput is the number of requests served per second.
A model turns input into output: an image becomes a label, speech becomes text, and a question
becomes an answer. Training adjusts the weights of the model; inference uses the trained weights.

The golden retriever is a friendly dog that loves to swim and to play fetch in the park.
The tabby cat sleeps in the sun on the window sill and watches the birds in the garden.
A red fox crossed the field at dawn, and a great white shark swam far out in the deep blue sea.
An espresso is a short, strong coffee; a cheeseburger is a sandwich with melted cheese and beef;
a pizza is baked in a very hot oven with tomato, cheese and fresh basil. The daisy and the sunflower
grow in the meadow, and a sports car raced along the coastal road past the old lighthouse.
Water boils at one hundred degrees Celsius at sea level and freezes at zero degrees.
The sun rises in the east and sets in the west. There are seven days in a week, twelve months in a
year, and about three hundred and sixty five days in a year. Monday, Tuesday, Wednesday, Thursday,
Friday, Saturday and Sunday. January, February, March, April, May, June, July, August, September,
October, November and December. One, two, three, four, five, six, seven, eight, nine, ten.

Once upon a time there was a young girl who lived near a large forest. Every day she walked to the
village market with her grandmother to sell apples, honey and cheese. One summer day they met a
traveller who told stories about distant mountains, golden deserts and cities full of light.
The girl listened carefully, asked many questions, and decided that one day she would see the world.
Years later she became a sailor, a writer and a teacher. She wrote books about the oceans, the
islands and the people she had met, and she always remembered the small village near the forest.

Please summarize the following text in one sentence. Answer the question briefly and politely.
Explain the idea step by step. Give three examples. Translate the sentence into simple English.
Write a short poem about the autumn leaves. List the main points, then draw a conclusion.
You are a helpful assistant. The user asks a question and the assistant gives a clear answer.
Sure, here is a short summary. I do not know the answer, but I can help you find it.
Thank you for your patience. Let me check that for you. Is there anything else I can do?

Music fills the room when the piano plays. The orchestra tuned their violins, the conductor raised
a hand, and the concert began. In the library, readers turned the pages of old books in silence.
Doctors and nurses work at the hospital day and night. Farmers plant seeds in spring, water the
fields in summer and gather the harvest in autumn. In winter the lake freezes and the roads are
covered with snow, so families stay at home, cook soup and tell stories by the fire.
Mathematics studies numbers, shapes and patterns. Physics studies energy, motion and light.
Chemistry studies matter and how it changes. Biology studies living things, from tiny cells to
huge whales. History tells us what happened in the past, and geography describes the places where
people live, the rivers they cross and the mountains they climb.

The museum opened a new exhibition about ancient ships, bronze tools, painted pottery and woven
baskets. Visitors admired an enormous map of trade routes that connected harbours, markets and
fortresses across several continents. A guide explained how merchants exchanged silk, spices,
salt, timber, copper, wool and glass, and how sailors navigated by watching the moon and planets.
Engineers designed bridges, tunnels, railways and airports; architects drew elegant buildings with
balconies, staircases, courtyards and towers. Electricians installed cables, switches and batteries,
while plumbers repaired pipes, valves and pumps. A mechanic replaced the brakes, tyres and engine
filters of an old truck, and a pilot checked the weather before the aeroplane departed for Tokyo.
In the kitchen, the chef chopped onions, garlic, carrots, peppers and mushrooms, then stirred them
into a spicy sauce with lemon, ginger, pepper and olive oil. Dessert was chocolate cake, vanilla ice
cream, strawberries, blueberries and whipped cream, served with sweet wine and fragrant jasmine tea.
Athletes practised jumping, running, throwing and swimming before the championship; the crowd
cheered loudly when the youngest competitor won a silver medal. Reporters interviewed the coach,
photographers captured the celebration, and newspapers published the results the following morning.
Scientists measured temperature, pressure, humidity and radiation with sensitive instruments,
recorded everything in notebooks and spreadsheets, and compared the observations with predictions.
Their hypothesis was surprising, yet the experiment confirmed it: the crystals glowed faintly when
exposed to ultraviolet light. Students debated the evidence, questioned assumptions, and proposed
improvements to the methodology, because careful reasoning matters more than quick agreement.
Volcanoes, earthquakes, glaciers, hurricanes and tornadoes shape the landscape; forests, wetlands,
savannas and coral reefs shelter countless species of insects, reptiles, amphibians and mammals.
Elephants, giraffes, zebras, penguins, dolphins, eagles, owls, butterflies and honeybees all play
important roles in their ecosystems. Conservation volunteers protect habitats, monitor populations,
and educate communities about sustainable fishing, responsible tourism and renewable energy.
Economists discuss inflation, wages, taxes, savings, investment, employment and international trade.
Lawyers negotiate contracts, judges interpret legislation, and citizens vote in free elections.
Philosophers wonder about knowledge, justice, freedom, beauty, responsibility and happiness, while
poets celebrate friendship, loneliness, memory, courage, hope and the quiet wisdom of everyday life.
Grammar describes nouns, verbs, adjectives, adverbs, pronouns, prepositions and conjunctions;
punctuation includes commas, periods, colons, semicolons, quotation marks and exclamation points.
Quickly, quietly, gently, carefully, honestly, probably, certainly, usually, rarely, yesterday,
tomorrow, tonight, everywhere, somewhere, nowhere, although, whenever, wherever, whether, unless.
"""


def corpus_lines() -> list[str]:
    """The corpus as non-empty lines (the unit the tokenizer trainers iterate over)."""
    return [line.strip() for line in CORPUS.splitlines() if line.strip()]


def corpus_sha() -> str:
    """Short content hash, part of every demo spec so editing the corpus changes the versions."""
    return hashlib.sha256(CORPUS.encode()).hexdigest()[:12]
