"""The ``rbee`` command: one click command per thing a person asks the queen to do.

Every command that talks to the queen runs one job there and streams it (``runner.run_job``),
except ``rbee queen start|stop`` (local processes, ``services``), ``rbee jobs ...`` (the job
endpoints themselves) and ``rbee config show``. Job parameters are sent only when given, so the
queen's (and worker's) defaults apply otherwise, and the queen is the one judge of their ranges:
a value it refuses exits 5 with its message and the field.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click

from jobproto import JobProtoError, JobState
from jobproto.client import JobClient
from jobproto.telemetry import traced
from rbee_contracts.auth import (
    ENV_QUEEN_REDIS_URL,
    ENV_QUEEN_SECRET_FILE,
    ENV_TOKEN,
    KEEPER_TOKEN_FILE,
)
from rbee_contracts.engines import ENGINES
from rbee_contracts.hive_ops import GGUF_DTYPES

from . import __version__, certs
from .access import AccessError, QueenRefused, token_summary
from .config import SETTINGS, ConfigError, Settings, load_settings
from .render import Hinted, HumanRenderer, JsonRenderer, Renderer
from .runner import (
    EXIT_OK,
    EXIT_USAGE,
    call,
    report,
    run_job,
    run_sync,
    stream_job,
)
from .services import (
    ServiceError,
    describe,
    is_listening,
    is_local,
    local_hive_fields,
    local_services,
    queen_secret_file,
    queen_state_dir,
    rotate_secret,
    running_pid,
    start_local,
    stop_local,
    with_port,
)

__all__ = ["main", "rbee"]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = """\b
Exit codes: 0 success, 1 job failed, 2 usage error, 3 queen unreachable,
4 job cancelled, 5 request refused by the queen (validation, token), 130 Ctrl+C."""

JOB_STATES = tuple(state.value for state in JobState)


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """``nan`` and ``inf`` are usage errors: JSON cannot carry them, so the queen (the judge of
    every value it can be sent) cannot be asked."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", ctx, param)
    return value


class SettingsError(click.ClickException):
    """A bad setting is a usage error (exit 2), reported without the usage line."""

    exit_code = EXIT_USAGE


class App:
    """What the group passes to its commands: the flags, and the settings made from them."""

    def __init__(self, flags: dict[str, Any], config_file: Path | None) -> None:
        self.flags = flags
        self.config_file = config_file
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        # Loaded on first use, so that `rbee CMD --help` works with a broken config file.
        if self._settings is None:
            try:
                self._settings = load_settings(self.flags, config_file=self.config_file)
            except ConfigError as exc:
                raise SettingsError(str(exc)) from None
        return self._settings


def renderer_for(as_json: bool) -> Renderer:
    if as_json:
        return JsonRenderer(sys.stdout, sys.stderr)
    return HumanRenderer(sys.stdout, sys.stderr)


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON Lines on stdout: one object per event, then the result.",
)
hive_option = click.option(
    "--hive", default=None, help="The hive to use (default: the only one the queen knows)."
)


def _fields(**fields: Any) -> dict[str, Any]:
    """Job fields that were given (None and empty tuples are left to the queen's defaults)."""
    return {k: v for k, v in fields.items() if v is not None and v != ()}


def job_command(operation: str) -> Callable[[F], F]:
    """Make a command function that returns job fields into one that runs the job and exits."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> None:
            ctx = click.get_current_context()
            app: App = ctx.ensure_object(App)
            fields = func(*args, **kwargs)
            renderer = renderer_for(as_json)
            settings = app.settings
            ctx.exit(run_sync(lambda: run_job(settings, renderer, operation, fields)))

        return json_option(wrapper)  # type: ignore[return-value]

    return decorate


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--queen-url", default=None, help="The queen (RBEE_QUEEN_URL).")
@click.option(
    "--state-dir",
    default=None,
    help="Pid files and logs of the local services (RBEE_STATE_DIR).",
)
@click.option("--models-dir", default=None, help="Models of the local hive (RBEE_MODELS_DIR).")
@click.option(
    "--hive-port", default=None, type=int, help="Port of the local hive (RBEE_HIVE_PORT)."
)
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file (RBEE_CONFIG; default $XDG_CONFIG_HOME/rbee/config.toml).",
)
@click.version_option(__version__, prog_name="rbee")
@click.pass_context
def rbee(
    ctx: click.Context,
    queen_url: str | None,
    state_dir: str | None,
    models_dir: str | None,
    hive_port: int | None,
    config_file: Path | None,
) -> None:
    """rbee: run LLMs on your own machines.

    Talks to the queen (default http://127.0.0.1:8500). Narration goes to stderr, output
    (tokens, results) to stdout. Settings: see `rbee config show`.
    """
    flags = {
        "queen_url": queen_url,
        "state_dir": state_dir,
        "models_dir": models_dir,
        "hive_port": hive_port,
    }
    ctx.obj = App(flags, config_file)


# -- infer and status -----------------------------------------------------------------------------


#: what the worker says when a chat reaches a model whose tokenizer has no chat template
#: (``rbee_worker.engines._prompt``)
NO_CHAT_TEMPLATE = "no chat template"


def raw_hint(code: str, message: str) -> str | None:
    """The advice after a chat refused because the model has no chat template: ``--raw``."""
    if code == "invalid_request" and NO_CHAT_TEMPLATE in message:
        return (
            "this model has no chat template (a base model, not an instruct one): send PROMPT"
            " as a plain completion with --raw"
        )
    return None


@rbee.command()
@click.argument("prompt")
@click.option("--model", "-m", required=True, help="Model name (as the hive knows it).")
@click.option("--max-tokens", type=int, default=None, help="Most tokens to generate.")
@click.option("--temperature", type=float, default=None, callback=_finite, help="0 = greedy.")
@click.option("--top-p", type=float, default=None, callback=_finite)
@click.option("--top-k", type=int, default=None, help="0 = off.")
@click.option("--seed", type=int, default=None)
@click.option("--stop", multiple=True, help="Stop sequence (repeatable).")
@click.option(
    "--presence-penalty",
    type=float,
    default=None,
    callback=_finite,
    help="-2..2: lower the odds of any token already generated (OpenAI's).",
)
@click.option(
    "--frequency-penalty",
    type=float,
    default=None,
    callback=_finite,
    help="-2..2: lower a token's odds by how often it was generated (OpenAI's).",
)
@click.option("--system", default=None, help="System message, sent before PROMPT.")
@click.option(
    "--raw",
    is_flag=True,
    help="Send PROMPT as it is, a plain completion to continue, not a chat (no chat template:"
    " for base models, or to write the template yourself).",
)
@hive_option
@json_option
@click.option(
    "--no-autostart", is_flag=True, help="Do not start the local queen and hive when not running."
)
@click.pass_obj
def infer(
    app: App,
    prompt: str,
    model: str,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
    stop: tuple[str, ...],
    presence_penalty: float | None,
    frequency_penalty: float | None,
    system: str | None,
    raw: bool,
    hive: str | None,
    as_json: bool,
    no_autostart: bool,
) -> None:
    """Ask a model PROMPT ('-' reads it from stdin); the answer streams to stdout.

    PROMPT is sent as the user's message of a chat, through the model's chat template (as
    `ollama run` does), after the --system message if any. --raw sends PROMPT as a plain
    completion instead: the model continues the text.

    \b
    rbee infer "What is the capital of France?" -m smollm2 --temperature 0
    rbee infer "Once upon a time" -m tiny --raw
    """
    if raw and system is not None:
        raise click.UsageError("--system needs a chat: leave out --raw")
    if prompt == "-":
        prompt = sys.stdin.read()
    fields = _fields(
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=list(stop) if stop else None,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        hive=hive,
    )
    if raw:
        fields["prompt"] = prompt
    else:
        system_turn = [] if system is None else [{"role": "system", "content": system}]
        fields["messages"] = [*system_turn, {"role": "user", "content": prompt}]
    settings = app.settings
    renderer = renderer_for(as_json)
    if not raw:
        renderer = Hinted(renderer, raw_hint)
    code = run_sync(
        lambda: run_job(settings, renderer, "infer", fields, autostart=not no_autostart)
    )
    click.get_current_context().exit(code)


@rbee.command()
@job_command("status")
def status() -> dict[str, Any]:
    """Hives, workers, models and jobs in flight, as the queen sees them."""
    return {}


# -- queen ----------------------------------------------------------------------------------------


@rbee.group()
def queen() -> None:
    """The local queen (and hive) processes."""


@queen.command("start")
@click.option(
    "--redis-url",
    default=None,
    metavar="URL",
    help="Share jobs, hives and in-flight counts with the other queens on this Redis"
    f" (redis://[user:password@]host:port/db). The queen gets it as {ENV_QUEEN_REDIS_URL}, and"
    f" without this option inherits {ENV_QUEEN_REDIS_URL} from here: set that to keep a"
    " password out of this command line. Every queen on one Redis needs the same secret"
    f" ({ENV_QUEEN_SECRET_FILE}).",
)
@click.option(
    "--port",
    default=None,
    type=click.IntRange(1, 65535),
    help="The port of the queen to start, instead of queen_url's (a second queen on this"
    " machine: with another --state-dir).",
)
@json_option
@click.pass_obj
def queen_start(app: App, as_json: bool, redis_url: str | None, port: int | None) -> None:
    """Start the local queen and hive in the background (no-op when running)."""
    settings = app.settings
    if port is not None:
        settings = attrs.evolve(settings, queen_url=with_port(settings.queen_url, port))
    renderer = renderer_for(as_json)
    queen_env = {} if redis_url is None else {ENV_QUEEN_REDIS_URL: redis_url}

    async def start() -> int:
        try:
            await start_local(settings, renderer.note, queen_env=queen_env)
        except (ServiceError, QueenRefused, AccessError, JobProtoError) as exc:
            return report(renderer, exc, settings, None)
        queen_svc, hive_svc = local_services(settings)
        renderer.output(
            {
                "queen": {"url": queen_svc.url, "pid": running_pid(queen_svc)},
                "hive": {"url": hive_svc.url, "pid": running_pid(hive_svc)},
                "logs": str(queen_svc.log_file.parent),
                "hive_logs": str(hive_svc.log_file.parent),
            }
        )
        return EXIT_OK

    click.get_current_context().exit(run_sync(start))


@queen.command("stop")
@json_option
@click.pass_obj
def queen_stop(app: App, as_json: bool) -> None:
    """Stop the local hive (through the queen), then the queen (SIGTERM, then SIGKILL)."""
    settings = app.settings
    renderer = renderer_for(as_json)

    async def stop_all() -> int:
        results = await stop_local(settings)
        for name, result in results.items():
            if result.stale:
                renderer.note(f"removed the stale pid file of the {name}")
        renderer.output({name: describe(result) for name, result in results.items()})
        return EXIT_OK

    click.get_current_context().exit(run_sync(stop_all))


@queen.command("rotate-secret")
@json_option
@click.pass_obj
def queen_rotate_secret(app: App, as_json: bool) -> None:
    """Replace the local queen's secret: every token made from it stops working.

    Stops the local queen and its hives, writes a new secret, starts them again (the local hive
    gets its new tokens from the queen). Keepers on other machines need the new keeper.token;
    hives on other machines need `rbee hive start --host ALIAS` again.
    """
    settings = app.settings
    renderer = renderer_for(as_json)
    queen_svc, _ = local_services(settings)

    async def rotate() -> int:
        if not is_local(settings.queen_url):
            message = (
                f"the queen at {settings.queen_url} is not on this machine: rotate its secret there"
            )
            renderer.error(message, exit_code=EXIT_USAGE, code="queen_not_local")
            return EXIT_USAGE
        try:
            restarted = await rotate_secret(settings, renderer.note)
        except (ServiceError, QueenRefused, AccessError, JobProtoError) as exc:
            return report(renderer, exc, settings, None)
        keeper_token = queen_state_dir(settings) / KEEPER_TOKEN_FILE
        written = "" if restarted else " (the queen writes it when it starts)"
        renderer.note(
            "hives on other machines need `rbee hive start --host ALIAS` again, and keepers on"
            f" other machines a copy of the new {keeper_token}{written}"
        )
        renderer.output(
            {
                "secret": str(queen_secret_file(settings)),
                "restarted": restarted,
                "queen_pid": running_pid(queen_svc),
                "keeper_token": str(keeper_token),
            }
        )
        return EXIT_OK

    click.get_current_context().exit(run_sync(rotate))


@queen.command("status")
@json_option
@click.pass_obj
def queen_status(app: App, as_json: bool) -> None:
    """The local processes, then the queen's own status (a `status` job)."""
    settings = app.settings
    renderer = renderer_for(as_json)
    queen_svc, hive_svc = local_services(settings)

    async def show() -> int:
        local = [
            {
                "service": service.name,
                "url": service.url,
                "pid": running_pid(service),
                "answers": await is_listening(service.url),
                "log": str(service.log_file),
            }
            for service in (queen_svc, hive_svc)
        ]
        renderer.output({"local": local})
        return await run_job(settings, renderer, "status", {})

    click.get_current_context().exit(run_sync(show))


# -- hives, workers, models -----------------------------------------------------------------------


@rbee.group()
def hive() -> None:
    """Hives: one per machine, they run the workers."""


@hive.command("list")
@job_command("hive_list")
def hive_list() -> dict[str, Any]:
    """The hives the queen knows, their state, and the hosts configured for SSH."""
    return {}


def _hive_or_default(name: str | None, host: str | None = None) -> str:
    """The hive named; else a hive on HOST is named after it, and otherwise the local one."""
    app: App = click.get_current_context().ensure_object(App)
    if name is not None:
        return name
    return host if host is not None else app.settings.hive_id


host_option = click.option(
    "--host",
    default=None,
    metavar="ALIAS",
    help="The machine, by SSH host alias (~/.ssh/config or rbee's hosts.toml); default: the"
    " queen's own. The hive is named after it unless --hive says otherwise.",
)


@hive.command("install")
@click.option("--host", required=True, metavar="ALIAS", help="SSH host alias of the machine.")
@click.option(
    "--extra",
    type=click.Choice(["transformers", "vllm"]),
    default=None,
    help="The engine to install with it (rbee-worker's extra).",
)
@click.option(
    "--offline",
    is_flag=True,
    help="The machine has no package index: copy every wheel from here.",
)
@job_command("hive_install")
def hive_install(host: str, extra: str | None, offline: bool) -> dict[str, Any]:
    """Install rbee-hive into a virtualenv on another machine, over SSH (through the queen)."""
    return _fields(host=host, extra=extra, offline=offline or None)


@hive.command("uninstall")
@click.option("--host", required=True, metavar="ALIAS", help="SSH host alias of the machine.")
@hive_option
@click.option(
    "--purge",
    is_flag=True,
    help="Remove the hive's state too (~/.local/state/rbee/hive there: its log, pid file and"
    " worker records); its models stay in ~/.local/share/rbee/models.",
)
@job_command("hive_uninstall")
def hive_uninstall(host: str, hive: str | None, purge: bool) -> dict[str, Any]:
    """Stop the hive on another machine and remove what `rbee hive install` put there."""
    return _fields(host=host, hive=hive, purge=purge or None)


@hive.command("status")
@hive_option
@host_option
@job_command("hive_status")
def hive_status(hive: str | None, host: str | None) -> dict[str, Any]:
    """One hive in detail (default: the local hive)."""
    return _fields(hive=_hive_or_default(hive, host), host=host)


@hive.command("start")
@hive_option
@host_option
@click.option(
    "--bind",
    default=None,
    help="With --host: the address the hive listens on (default: the one SSH reached).",
)
@click.option(
    "--port", type=int, default=None, help="With --host: the hive's port (default: 9000)."
)
@click.option(
    "--queen-url-for-hive",
    default=None,
    help="With --host: the URL the hive reaches the queen at (default: the host's queen_url"
    " in hosts.toml, else the queen's own URL, or when that is loopback the queen at this"
    " machine's address on the SSH connection).",
)
@job_command("hive_start")
def hive_start(
    hive: str | None,
    host: str | None,
    bind: str | None,
    port: int | None,
    queen_url_for_hive: str | None,
) -> dict[str, Any]:
    """Ask the queen to start a hive on its machine, or on another one (--host) over SSH."""
    app: App = click.get_current_context().ensure_object(App)
    name = _hive_or_default(hive, host)
    if host is not None:
        return _fields(hive=name, host=host, bind=bind, port=port, queen_url=queen_url_for_hive)
    if name != app.settings.hive_id:
        return {"hive": name}
    # The local hive: the same port and models as `rbee queen start` gives it.
    return local_hive_fields(app.settings)


@hive.command("stop")
@hive_option
@host_option
@job_command("hive_stop")
def hive_stop(hive: str | None, host: str | None) -> dict[str, Any]:
    """Ask the queen to stop a hive it started (on its machine, or on --host over SSH)."""
    return _fields(hive=_hive_or_default(hive, host), host=host)


@rbee.group()
def worker() -> None:
    """Workers: one process per loaded model."""


def _engine_args(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str] | None:
    args: dict[str, str] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", ctx, param)
        args[key] = value
    return args or None


@worker.command("spawn")
@click.option("--model", "-m", required=True, help="Model name.")
@click.option("--engine", type=click.Choice(ENGINES), default=None, help="Default: auto.")
@click.option(
    "--engine-arg",
    "engine_args",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_engine_args,
    help="Option for the engine (repeatable), e.g. tokens_per_second=20 for synthetic.",
)
@hive_option
@job_command("worker_spawn")
def worker_spawn(
    model: str, engine: str | None, engine_args: dict[str, str] | None, hive: str | None
) -> dict[str, Any]:
    """Start a worker for a model and wait until it is ready."""
    return _fields(model=model, engine=engine, engine_args=engine_args, hive=hive)


@worker.command("list")
@hive_option
@job_command("worker_list")
def worker_list(hive: str | None) -> dict[str, Any]:
    """The workers of a hive."""
    return _fields(hive=hive)


@worker.command("stop")
@click.argument("worker_id")
@hive_option
@job_command("worker_stop")
def worker_stop(worker_id: str, hive: str | None) -> dict[str, Any]:
    """Stop a worker."""
    return _fields(worker_id=worker_id, hive=hive)


@rbee.group()
def model() -> None:
    """Models on the hives."""


def split_gguf_ref(repo_ref: str) -> tuple[str, str | None]:
    """``Org/Repo:path/file.gguf`` as ``(repo_id, file)``; a plain ``Org/Repo`` as
    ``(repo_id, None)``. A repo id has no ``:``, so the first one separates them; the queen
    judges both parts."""
    repo_id, sep, file = repo_ref.partition(":")
    return repo_id, file if sep else None


dtype_option = click.option(
    "--dtype",
    type=click.Choice(GGUF_DTYPES),
    default=None,
    help="What the imported weights are stored as (default: float32, which vLLM's CPU build"
    " runs; bfloat16 and float16 take half the space).",
)


@model.command("download")
@click.argument("repo_ref", metavar="REPO_ID[:FILE.gguf]")
@click.option("--revision", default=None, help="Branch, tag or commit (default: main).")
@click.option(
    "--name",
    default=None,
    help="Name to register it under (default: from REPO_ID, or the GGUF file's name).",
)
@dtype_option
@hive_option
@job_command("model_download")
def model_download(
    repo_ref: str, revision: str | None, name: str | None, dtype: str | None, hive: str | None
) -> dict[str, Any]:
    """Download a model from the Hugging Face Hub onto a hive.

    REPO_ID (Org/Repo) downloads the repo's model files. Org/Repo:FILE.gguf downloads that one
    GGUF file and imports it as `rbee model import` does.
    """
    repo_id, file = split_gguf_ref(repo_ref)
    if file == "":
        raise click.UsageError(
            f"no file after the colon in {repo_ref!r}: REPO_ID:FILE.gguf downloads that GGUF"
            " file, REPO_ID alone the repo's model files"
        )
    if dtype is not None and file is None:
        raise click.UsageError("--dtype applies to a GGUF file: REPO_ID:FILE.gguf")
    return _fields(repo_id=repo_id, file=file, revision=revision, name=name, dtype=dtype, hive=hive)


@model.command("register")
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@hive_option
@job_command("model_register")
def model_register(name: str, path: Path, hive: str | None) -> dict[str, Any]:
    """Register a local model directory under NAME (nothing is copied)."""
    # Relative to where the person is: the hive's working directory means nothing to them.
    return _fields(name=name, path=str(path.expanduser().absolute()), hive=hive)


@model.command("import")
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@dtype_option
@hive_option
@job_command("model_import")
def model_import(name: str, path: Path, dtype: str | None, hive: str | None) -> dict[str, Any]:
    """Import the GGUF file PATH (llama.cpp, Ollama, LM Studio) as the model NAME.

    The hive converts it once into its models directory, into weights both engines load, and
    remembers the file: importing the same file again is instant. PATH is on the hive's
    machine, under one of its model roots (for the local hive: the model_roots setting,
    RBEE_MODEL_ROOTS; for a hive started by hand: its --model-root). Architectures the
    conversion cannot handle are refused before any work.
    """
    return _fields(name=name, path=str(path.expanduser().absolute()), dtype=dtype, hive=hive)


@model.command("list")
@hive_option
@job_command("model_list")
def model_list(hive: str | None) -> dict[str, Any]:
    """The models of a hive."""
    return _fields(hive=hive)


@model.command("delete")
@click.argument("name")
@hive_option
@job_command("model_delete")
def model_delete(name: str, hive: str | None) -> dict[str, Any]:
    """Delete a model from a hive."""
    return _fields(name=name, hive=hive)


# -- jobs -----------------------------------------------------------------------------------------


@rbee.group()
def jobs() -> None:
    """The jobs on the queen."""


def _status_row(raw: dict[str, Any]) -> dict[str, Any]:
    error = raw.get("error")
    return {
        "job_id": raw.get("job_id"),
        "operation": raw.get("operation"),
        "state": raw.get("state"),
        "created_at": raw.get("created_at"),
        "finished_at": raw.get("finished_at"),
        "error": f"{error.get('code')}: {error.get('message')}"
        if isinstance(error, dict)
        else None,
    }


@jobs.command("list")
@click.option("--state", type=click.Choice(JOB_STATES), default=None, help="Only jobs in STATE.")
@click.option("--limit", type=click.IntRange(1, 100), default=50, show_default=True)
@json_option
@click.pass_obj
def jobs_list(app: App, state: str | None, limit: int, as_json: bool) -> None:
    """Jobs on the queen, newest first as the queen orders them."""
    settings = app.settings
    renderer = renderer_for(as_json)

    async def request(client: JobClient) -> Any:
        page = await client.list(state=state, limit=limit)
        if as_json:
            return {"jobs": [job.raw for job in page.jobs], "next_cursor": page.next_cursor}
        return {"jobs": [_status_row(job.raw) for job in page.jobs]}

    click.get_current_context().exit(run_sync(lambda: call(settings, renderer, request)))


@jobs.command("status")
@click.argument("job_id")
@json_option
@click.pass_obj
def jobs_status(app: App, job_id: str, as_json: bool) -> None:
    """One job: state, timestamps, result or error."""
    settings = app.settings
    renderer = renderer_for(as_json)

    async def request(client: JobClient) -> Any:
        return (await client.status(job_id)).raw

    click.get_current_context().exit(run_sync(lambda: call(settings, renderer, request)))


@jobs.command("cancel")
@click.argument("job_id")
@json_option
@click.pass_obj
def jobs_cancel(app: App, job_id: str, as_json: bool) -> None:
    """Cancel a job (and, through the queen, what it runs downstream)."""
    settings = app.settings
    renderer = renderer_for(as_json)

    async def request(client: JobClient) -> Any:
        job = await client.cancel(job_id)
        return {"job_id": job.job_id, "state": job.state}

    click.get_current_context().exit(run_sync(lambda: call(settings, renderer, request)))


@jobs.command("stream")
@click.argument("job_id")
@click.option("--after", type=click.IntRange(min=0), default=0, help="Skip events up to this seq.")
@click.option(
    "--cancel-on-interrupt",
    is_flag=True,
    help="Ctrl+C cancels the job (by default it only detaches from it).",
)
@json_option
@click.pass_obj
def jobs_stream(
    app: App, job_id: str, after: int, cancel_on_interrupt: bool, as_json: bool
) -> None:
    """Attach to a job: replay its events from the start (or --after) and follow it to the end."""
    settings = app.settings
    renderer = renderer_for(as_json)

    async def start(client: JobClient) -> tuple[str, str, int]:
        job = await client.status(job_id)
        return job.job_id, job.operation, after

    code = run_sync(
        lambda: stream_job(settings, renderer, start, cancel_on_interrupt=cancel_on_interrupt)
    )
    click.get_current_context().exit(code)


# -- certificates ---------------------------------------------------------------------------------


@rbee.group()
def cert() -> None:
    """TLS certificates for a queen or hive that listens beyond loopback."""


@cert.command("generate")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    required=True,
    help="A name or IP address clients use to reach the service (repeatable).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for cert.pem and key.pem (key.pem is written 0600).",
)
@click.option("--days", type=click.IntRange(min=1), default=825, show_default=True)
@json_option
def cert_generate(hosts: tuple[str, ...], out: Path, days: int, as_json: bool) -> None:
    """A self-signed certificate for HOSTs and its key; prints its SHA-256 fingerprint."""
    renderer = renderer_for(as_json)
    try:
        made = certs.generate(hosts, out, days)
    except (certs.CertError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    renderer.note(
        f"serve with: --tls-cert {made.cert} --tls-key {made.key} (on the queen or hive);"
        f" clients verify it with tls_ca = {str(made.cert)!r} (RBEE_TLS_CA; on the queen and"
        " hives --tls-ca); compare the fingerprint on both machines"
    )
    renderer.output(
        {
            "cert": str(made.cert),
            "key": str(made.key),
            "hosts": list(made.hosts),
            "not_after": made.not_after.isoformat(timespec="seconds"),
            "fingerprint_sha256": made.fingerprint,
        }
    )


@cert.command("fingerprint")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def cert_fingerprint(file: Path) -> None:
    """The SHA-256 fingerprint of the PEM certificate in FILE."""
    try:
        click.echo(certs.fingerprint(file))
    except certs.CertError as exc:
        raise click.ClickException(str(exc)) from None


# -- config ---------------------------------------------------------------------------------------


@rbee.group()
def config() -> None:
    """Settings: defaults < config file < RBEE_* environment < flags."""


@config.command("show")
@json_option
@click.pass_obj
def config_show(app: App, as_json: bool) -> None:
    """Every setting, its value, and where that value came from."""
    settings = app.settings
    values = settings.as_dict()
    found = "" if settings.config_file_found else " (not found)"
    # The token itself is never printed: only whether there is one and where it comes from
    # (the file is read now), or what is wrong with it.
    has_token, token_source = token_summary(settings)
    if as_json:
        renderer_for(True).output(
            {
                "config_file": str(settings.config_file),
                "config_file_found": settings.config_file_found,
                "settings": values,
                "sources": dict(settings.sources),
                "token": "***" if has_token else None,
                "token_source": token_source,
            }
        )
        return
    # As TOML, so that `rbee config show > ~/.config/rbee/config.toml` makes a config to edit.
    lines = [f"# config file: {settings.config_file}{found}"]
    for spec in SETTINGS:
        where = ", ".join(filter(None, [spec.env, spec.flag]))
        lines.append(f"\n# {spec.help} ({where})")
        if values[spec.name] is None:  # TOML has no null: an unset setting stays a comment
            lines.append(f'# {spec.name} = ""  # not set ({settings.sources[spec.name]})')
            continue
        # JSON strings, numbers and arrays of strings are valid TOML values.
        value = json.dumps(values[spec.name], ensure_ascii=False)
        lines.append(f"{spec.name} = {value}  # {settings.sources[spec.name]}")
    shown = "***" if has_token else "none"
    lines.append(
        f"\n# the keeper's token for the queen ({ENV_TOKEN}, else token_file; never shown)"
    )
    lines.append(f"# token: {shown}  # {' '.join(token_source.split())}")
    click.echo("\n".join(lines))


#: seconds the keeper waits for the trace collector per batch of spans, when the OTEL_* variables
#: set no timeout: a command should not hang for long at exit when the collector is down
TRACE_EXPORT_TIMEOUT = 3.0


def main() -> None:
    """Entry point of the ``rbee`` console script."""
    # traces over OTLP/HTTP when the OTEL_* variables ask for them (docs/tracing.md); the spans
    # are flushed before the command exits
    with traced("rbee-keeper", export_timeout=TRACE_EXPORT_TIMEOUT):
        rbee(prog_name="rbee")


if __name__ == "__main__":
    main()
