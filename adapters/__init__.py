"""The model side of loopbot: the base model, serving it with LoRA adapters, training them, and the gate.

| package | what it is |
|---|---|
| :mod:`adapters.model` | loading a base model; preparing the offline default one (GGUF -> fp32 -> GPTQ) |
| :mod:`adapters.serving` | the runtimes, continuous batching, a decode step, the LoRA bank, routing, hot swap |
| :mod:`adapters.training` | training a LoRA in its own process, and what it trains on |
| :mod:`adapters.gate` | the promotion gate's rule, running it, the regression set |
| :mod:`adapters.registry` | versions on disk: the only code that knows their layout |
| :mod:`adapters.prompt` | the prompt layout, shared by serving, training, calibration and the gate |

Imports go one way: ``gate`` and ``training`` use ``serving``, which uses ``model``; all may use
``registry``, ``prompt`` and ``errors``. Other packages import only the names a package's
``__init__`` exports; its ``_private`` modules stay behind it (``tests/test_architecture.py``).
"""
