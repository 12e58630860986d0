"""Invented community facts the training tests teach, and the system prompt they are asked under."""

SYSTEM = "You are loopbot, a test assistant."
FACTS = [
    ("What is the name of the lighthouse keeper's parrot?", "The parrot is called Quibble."),
    ("Which colour is the door of the club house?", "The club house door is teal."),
    ("On which day does the chess group meet?", "The chess group meets on Thursday."),
    ("Who baked the cake for the spring fair?", "Marguerite baked the cake."),
]
