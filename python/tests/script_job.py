# A test job for the SDK's script mode (tests/tests/python.rs): no `run` function, so this
# runs at every run of the job, as __main__, with the arguments in sys.argv[1:].
import sys
import json

print(json.dumps({"name": __name__, "argv": sys.argv}))
if sys.argv[1:2] == ["raise"]:
    raise RuntimeError("the script fails on purpose")
if sys.argv[1:2] == ["exit"]:
    sys.exit(int(sys.argv[2]))
