"""Collection settings for the whole repository (doctests under src/ and tests/)."""

import importlib.util

# partwise.hf needs the optional transformers package; without it its doctests are not collected
# (tests/hf skips itself with pytest.importorskip).
collect_ignore_glob = [] if importlib.util.find_spec("transformers") else ["src/partwise/hf/*"]
