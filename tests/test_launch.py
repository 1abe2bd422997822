"""hpcgate.launch: the hub's and the lab's start-up without rfc3987_syntax's parsers.

Each check runs in a fresh interpreter (the deferral is about what a process imports
first), with the environment's real jsonschema, jupyter_events and rfc3987_syntax.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from hpcgate import singleuser

# IRIs jsonschema's "iri" format check must accept and refuse, deferred or not
IRI_CASES = ["https://例え.テスト/パス?q=1#frag", "urn:isbn:0451450523", "not an iri", "http://a b/"]

PROBE = textwrap.dedent(
    """
    import json, sys
    from hpcgate.launch import defer_rfc3987_syntax
    deferred = defer_rfc3987_syntax() if sys.argv[1] == "defer" else False
    import jupyter_events.logger  # what JupyterHub and the Jupyter server import
    from jsonschema import Draft7Validator
    after_import = {name: name in sys.modules for name in ("lark", "rfc3987_syntax.syntax_helpers")}
    checker = Draft7Validator.FORMAT_CHECKER
    results = [checker.conforms(value, "iri") for value in json.loads(sys.argv[2])]
    real = getattr(sys.modules["rfc3987_syntax"], "__hpcgate_deferred__", False) is False
    print(json.dumps({"deferred": deferred, "after_import": after_import, "results": results,
                      "real_after_check": real}))
    """
)


def probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, json.dumps(IRI_CASES)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_the_jupyter_stack_loads_without_building_the_iri_parsers():
    plain, deferred = probe("plain"), probe("defer")
    # without the deferral jupyter_events' import builds the Lark parsers ...
    assert plain["after_import"] == {"lark": True, "rfc3987_syntax.syntax_helpers": True}
    # ... with it they are not built until an IRI is checked
    assert deferred["deferred"] is True
    assert deferred["after_import"] == {"lark": False, "rfc3987_syntax.syntax_helpers": False}
    # the "iri" format answers the same, and the first check brought the real module
    assert deferred["results"] == plain["results"]
    assert plain["results"][:2] == [True, True] and False in plain["results"][2:]
    assert deferred["real_after_check"] is True


def test_the_deferral_is_done_once_and_only_before_the_import():
    code = textwrap.dedent(
        """
        import sys
        from hpcgate.launch import defer_rfc3987_syntax
        first, second = defer_rfc3987_syntax(), defer_rfc3987_syntax()
        import rfc3987_syntax
        rfc3987_syntax.RFC3987_SYNTAX_TERMS  # any other name loads the real module
        print(first, second, defer_rfc3987_syntax(), hasattr(sys.modules["rfc3987_syntax"], "__hpcgate_deferred__"))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False", "False"]


def test_the_lab_runs_in_process_only_for_this_installations_scripts(tmp_path):
    here = Path(sys.executable).parent
    own = here / "jupyterhub-singleuser"
    assert own.exists(), "the test environment has JupyterHub's single-user script"
    entry = singleuser.own_entry_point("jupyterhub-singleuser", str(own))
    assert entry is not None and entry.value == "jupyterhub.singleuser:main"
    # the same name in another environment's bin directory is exec'd, not imported
    other = tmp_path / "bin" / "jupyterhub-singleuser"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    assert singleuser.own_entry_point("jupyterhub-singleuser", str(other)) is None
    # a program of this installation that is not a console script is exec'd too
    assert singleuser.own_entry_point("python3", str(here / "python3")) is None


def test_the_installed_hub_script_goes_through_the_launcher():
    script = Path(sys.executable).parent / "hpcgate-hub"
    assert "from hpcgate.launch import hub" in script.read_text()
    assert os.access(script, os.X_OK)
