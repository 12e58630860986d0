"""Use cases: what loopbot does, once, for both front ends.

The Discord cogs (``bot/cogs``) and the CLI commands (``bot/commands``) translate: an interaction
or a command line becomes a call to one of these functions, and its result becomes a message; what is
Discord's own (streaming edits, buttons and forms, private delivery, the schedule) stays in the cogs. Each function takes its parts (knowledge base, feedback log, registry, runtime) as
arguments, so the same code serves the bot, the CLI, the demo and the tests. Nothing here imports
discord.

| module | use cases |
|---|---|
| :mod:`bot.usecases.asking` | answer and record, record an answer, the privacy probe |
| :mod:`bot.usecases.feedback` | vote, correct, vote on a correction, publish a correction |
| :mod:`bot.usecases.knowledge` | add documents, remember, forget a member |
| :mod:`bot.usecases.training` | a training cycle |
| :mod:`bot.usecases.pairs` | which pairs a cycle trains on and the gate judges it on |
| :mod:`bot.usecases.serving` | which adapter answers each guild and member, promote, roll back, retire |
| :mod:`bot.usecases.privacy` | a member's data, consent and export; the server switch; retention |
| :mod:`bot.usecases.limits` | per-member bounds on the write paths |
| :mod:`bot.usecases.errors` | which errors a member or operator can fix |
"""
