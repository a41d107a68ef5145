"""sharpen leaves transformers' Hub kernels off unless the user turns them on (USE_HUB_KERNELS)."""

import os
import subprocess
import sys

CHECK = ("import sharpen, os; from transformers.integrations.hub_kernels import _kernels_enabled; "
         "print(os.environ['USE_HUB_KERNELS'], _kernels_enabled())")


def _run(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    if env_value is not None:
        env["USE_HUB_KERNELS"] = env_value
    return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_hub_kernels_off_by_default():
    assert _run(None) == "NO False"


def test_user_choice_is_kept():
    assert _run("YES") == "YES True"
