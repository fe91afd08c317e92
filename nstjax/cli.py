"""What every entry point shares: Hydra composition -> typed, checked settings -> the job.

`entry_point("train", TrainConfig)(job)` gives a `main()` that composes `conf/train.yaml`,
checks it against the schema (`nstjax.config`), applies the runtime settings, runs
`job(settings, run_dir)`, and turns every problem with the input (a Hydra composition error,
a wrong type or value, an `NstjaxError` from the job) into one line and exit status 2.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from nstjax.errors import EXIT_USAGE, NstjaxError, cli_errors

T = TypeVar("T")
Job = Callable[[Any, Path], None]


def quiet_jax_logs() -> None:
    """Hydra sets the root logger to INFO; JAX's backend probing is noise at that level."""
    for name in ("jax", "absl", "orbax", "grain"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _one_line(e: BaseException) -> str:
    """A Hydra/OmegaConf error as one line: its text, the cause's, and any listed options."""
    texts = []
    for part in (e, e.__cause__):
        if part is None:
            continue
        msg = getattr(part, "msg", None) or str(part)
        lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
        if not lines:
            continue
        head = lines[0].rstrip(".")
        if len(lines) > 1 and lines[1].startswith("Available options"):  # an unknown group option
            options = []
            for ln in lines[2:]:
                if ln.endswith(":") or "=" in ln:
                    break
                options.append(ln)
            head += f" (available: {', '.join(options)})"
        texts.append(head)
    if len(texts) == 2 and texts[0].startswith("Error merging override "):
        return f"{texts[0].removeprefix('Error merging override ')}: {texts[1]}"
    return "; ".join(dict.fromkeys(texts))


def entry_point(config_name: str, schema: type[T]) -> Callable[[Callable[[T, Path], Any]], Callable[[], None]]:
    def decorate(job: Callable[[T, Path], Any]) -> Callable[[], None]:
        import hydra
        from omegaconf import DictConfig

        started = []

        @cli_errors
        def task(cfg: DictConfig) -> None:
            from hydra.core.hydra_config import HydraConfig

            from nstjax import config, runtime

            started.append(True)
            quiet_jax_logs()
            settings = config.load(schema, cfg)
            runtime.configure(getattr(settings, "runtime", None))
            job(settings, Path(HydraConfig.get().runtime.output_dir))

        task.__module__ = job.__module__  # Hydra names the job (and its log) after this module
        hydra_task = hydra.main(config_path=f"pkg://{_conf_module()}", config_name=config_name,
                                version_base="1.3")(task)

        @functools.wraps(job)
        def main() -> None:
            from hydra.errors import HydraException
            from omegaconf.errors import OmegaConfBaseException

            from nstjax import config

            config.register()
            # Hydra prints composition errors over several lines and exits 1; with this set it
            # raises them instead, and they get the one line every other input error gets.
            previous = os.environ.get("HYDRA_FULL_ERROR")
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                hydra_task()
            except (HydraException, OmegaConfBaseException, NstjaxError) as e:
                if started and not isinstance(e, NstjaxError):
                    raise  # a bug inside the job, not a bad input
                print(f"nstjax: error: {_one_line(e)}", file=sys.stderr, flush=True)
                sys.exit(EXIT_USAGE)
            finally:
                if previous is None:
                    os.environ.pop("HYDRA_FULL_ERROR", None)
                else:
                    os.environ["HYDRA_FULL_ERROR"] = previous

        return main

    return decorate


def _conf_module() -> str:
    from nstjax.config import CONFIG_MODULE

    return CONFIG_MODULE
