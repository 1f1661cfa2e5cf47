"""``localllm`` with every generation forced by the GBNF grammar in $LOCALLLM_TEST_GRAMMAR.

Tiny random-weight models say nothing useful; a grammar makes them say known text through the
real engine, sampler and session (test_cli_modes does the same in-process).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from localllm.engine import Engine

GRAMMAR = os.environ["LOCALLLM_TEST_GRAMMAR"]
_generate = Engine.generate


def generate(self: Engine, prompt: Any, settings: Any, **kwargs: Any) -> Any:
    kwargs["grammar"] = kwargs.get("grammar") or GRAMMAR
    return _generate(self, prompt, settings, **kwargs)


Engine.generate = generate  # type: ignore[method-assign]

# An engine in a child process (LOCALLLM_ISOLATE=1) gets the grammar across the pipe.
from localllm.enginechild import EngineProcess  # noqa: E402

_process_generate = EngineProcess.generate


def process_generate(self: EngineProcess, prompt: Any, settings: Any, **kwargs: Any) -> Any:
    kwargs["grammar"] = kwargs.get("grammar") or GRAMMAR
    return _process_generate(self, prompt, settings, **kwargs)


EngineProcess.generate = process_generate  # type: ignore[method-assign]

if __name__ == "__main__":
    from localllm.cli import main

    sys.argv = ["localllm", *sys.argv[1:]]
    main()
