"""What an rbd-wasm Python job has besides the `rados` and `rbd` modules, and the glue that
turns a job module into the component's exported `job.run`.

A job module is one of two kinds (`rbd-wasm build-py` decides when it builds the component):

- It defines `run(args)` at its top level: the module is imported when the component is
  built, and every run calls `run(args)` with the operator's arguments. Its top-level code
  runs once, at build time, so keep it to imports and definitions.
- It does not: it is a script, as the reference text's examples are. Its top-level code runs
  at every run, as `__main__`, with the operator's arguments in `sys.argv[1:]`.

Either way the job succeeds when the code returns, and fails when it raises: the failure
message is `ExceptionClass: message`, and the traceback goes to the job's standard error.
`sys.exit(0)` (or `sys.exit()`) is success, any other `sys.exit` a failure.

componentize-py snapshots the interpreter after building: a module that was not imported by
then cannot be imported while the job runs. Every module a job imports by name (anywhere in
its source) is therefore imported at build time; only a module chosen at run time
(`importlib.import_module(name)`) can be missing.
"""

import ast
import builtins
import importlib
import importlib.util
import sys
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import job_host, rbd as _wit, secrets as _secrets, types as _types

__all__ = ["report_progress", "granted_pools", "lock_client", "secret", "secret_names"]


def report_progress(label, done, total=None):
    """Tell the operator how far a long operation is: `done` of `total` units (`total` may
    be None when it is not known). The CLI draws a progress bar per label."""
    job_host.report_progress(_types.Progress(label=str(label), done=int(done),
                                             total=None if total is None else int(total)))


def granted_pools():
    """The names of the pools this job was granted, in the operator's order."""
    return list(_wit.granted_pools())


def secret_names():
    """The names of the secrets the operator handed this job (a manifest's `[secrets]`)."""
    return list(_secrets.names())


def secret(name):
    """The value (bytes) of the secret `name` the operator handed this job. KeyError for a
    name it was not handed. The host keeps the value out of what it prints for the job, but
    a job should still never print it."""
    try:
        return bytes(_secrets.get(str(name)))
    except Err:
        raise KeyError(name) from None


def _describe(error):
    """`ExceptionClass: message`, the last line of a Python traceback without the module."""
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _imported_names(tree):
    """Every module an `import` statement in `tree` names, with its parent packages, and the
    `from M import N` names that may be submodules."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _preimport(tree):
    """Import now (at build time) what the script will import when it runs. A module that
    cannot be imported is left for the script to fail on (it may be optional)."""
    for name in _imported_names(tree):
        try:
            importlib.import_module(name)
        except BaseException:
            pass


# Modules of the standard library that others import inside a function, where the job
# would meet them only at run time: imported at build time along with the module that needs
# them.
_LAZY_IMPORTS = {
    "argparse": ("shutil", "locale"),  # HelpFormatter; gettext, for every message
    "gettext": ("locale",),
    "datetime": ("_strptime",),  # datetime.strptime
    "time": ("_strptime",),  # time.strptime
    "socket": ("encodings.idna",),  # host names in addresses (the host then refuses)
}


def _import_lazy_dependencies():
    for module, needs in _LAZY_IMPORTS.items():
        if module in sys.modules:
            for name in needs:
                try:
                    importlib.import_module(name)
                except ImportError:
                    pass


def _defines_run(tree):
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "run"
               for node in tree.body)


def _run_guarded(body):
    """Run `body()`; turn any exception into the job's failure message."""
    try:
        body()
    except SystemExit as e:
        if e.code not in (None, 0):
            _flush()
            raise Err(e.code if isinstance(e.code, str) else f"the job exited with status {e.code}")
    except BaseException as e:
        # The job's own frames: this module's are noise to its author.
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb)
        _flush()
        raise Err(_describe(e))
    finally:
        _flush()


def load_job(module_name):
    """The class componentize-py exports as `job`, for the job module `module_name`.

    Called once, at build time, by the entry module `rbd-wasm build-py` generates."""
    if module_name in sys.stdlib_module_names:
        raise ImportError(f"a job cannot be called {module_name}.py: that is a module of Python's "
                          f"standard library, which would be loaded instead; rename the job")
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ImportError(f"no job module {module_name!r}")
    source = spec.loader.get_source(module_name)
    filename = spec.origin.rsplit("/", 1)[-1]
    tree = ast.parse(source, filename)

    # What the job imports inside its functions, too.
    _preimport(tree)
    if _defines_run(tree):
        module = importlib.import_module(module_name)
        entry = module.run

        def body(args):
            entry(list(args))
    else:
        code = compile(tree, filename, "exec")

        def body(args):
            sys.argv = [module_name] + list(args)
            namespace = {"__name__": "__main__", "__file__": filename, "__builtins__": builtins}
            exec(code, namespace)

    _import_lazy_dependencies()

    class Job(exports.Job):
        def run(self, args):
            _run_guarded(lambda: body(args))

    return Job
