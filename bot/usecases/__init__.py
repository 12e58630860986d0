"""Use cases: what loopbot does, once, for both front ends.

The Discord cogs (``bot/cogs``) and the CLI commands (``bot/commands``) only translate: an
interaction or a command line becomes a call to one of these functions, and its result becomes a
message. Each function takes its parts (knowledge base, feedback log, registry, runtime) as
arguments, so the same code serves the bot, the CLI, the demo and the tests. Nothing here imports
discord.

| module | use cases |
|---|---|
| :mod:`bot.usecases.asking` | answer and record, record an answer, the privacy probe |
| :mod:`bot.usecases.feedback` | vote, correct, vote on a correction, publish a correction |
| :mod:`bot.usecases.knowledge` | add documents, remember, forget a member |
| :mod:`bot.usecases.training` | a training cycle, promote, roll back |
| :mod:`bot.usecases.errors` | which errors a member or operator can fix |
"""
