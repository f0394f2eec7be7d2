"""The Jinja environment of the C templates: the one place that finds and opens templates/.

templates/ ships inside the wheel as graphc/templates; in a checkout it sits beside graphc/.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from graphc.backend.cprint import c_string
from graphc.core.errors import GraphcError
from graphc.core.paths import cache_root


def templates_dir() -> Path:
    """templates/ ships inside the wheel as graphc/templates; in a checkout it sits beside graphc/."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "model.c.j2").is_file():
            return candidate
    raise GraphcError(f"graphc's templates are missing (looked in {here / 'templates'} and {here.parent / 'templates'})",
                      hint="reinstall graphc; the wheel must contain graphc/templates")


def mcu_dir() -> Path:
    """The microcontroller start-up files (startup.c, mps2_an386.ld, README.md): examples/mcu/ in a
    checkout, graphc/mcu in the wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "mcu", here.parent / "examples" / "mcu"):
        if (candidate / "startup.c").is_file():
            return candidate
    raise GraphcError(f"graphc's microcontroller files are missing (looked in {here / 'mcu'} and "
                      f"{here.parent / 'examples' / 'mcu'})", hint="reinstall graphc; the wheel must contain graphc/mcu")


MCU_FILES = ("startup.c", "mps2_an386.ld")   # what `graphc emit` copies into DIR/mcu/


_ENV: jinja2.Environment | None = None


class _TemplateCache(jinja2.FileSystemBytecodeCache):
    """Compiled templates kept in the build cache (cache_root()/jinja), so that a new process
    renders without compiling them again (most of a cached model's load time otherwise). Each
    entry is keyed by its template's text; one that cannot be written or read is skipped, never
    an error: the template is then compiled as before."""

    def dump_bytecode(self, bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass

    def load_bytecode(self, bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except (OSError, EOFError, ValueError, TypeError):
            bucket.reset()


def _template_cache() -> jinja2.BytecodeCache | None:
    directory = cache_root() / "jinja"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return _TemplateCache(str(directory))


def environment() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                                  undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                  keep_trailing_newline=True, autoescape=False, bytecode_cache=_template_cache())
        _ENV.globals["render_kernel"] = render_kernel
        _ENV.filters["c_string"] = c_string     # any text as a C string literal (main.c's #error)
    return _ENV


def render_kernel(record, names: dict[int, str] | None = None) -> str:
    """The C of one kernel record: the macro `kernel` of the template its class names (its sizes
    written with the dims' enum names, `names`: dim size -> C name, when given)."""
    from graphc.backend.kernels import with_names
    record = with_names(record, names) if names else record
    return str(environment().get_template(record.template).module.kernel(record))


def render_template(name: str, /, **ctx: Any) -> str:
    """Render one template of templates/ (export's main.c.j2 and Makefile.j2) with `ctx`."""
    return environment().get_template(name).render(ctx)
