"""The lerobot parity tests run in lerobot's own environment (`make test-parity`, made by
scripts/make_parity_venv.sh); elsewhere lerobot is absent and they are not collected."""
import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("lerobot") else ["test_*.py"]
