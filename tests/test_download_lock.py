"""One run at a time: download.py's lock per model directory, and what a complete model spares.

A run holds <model_dir>/.download.lock (filelock's flock) while it downloads and checks files;
another run waits, saying so. The kernel drops an flock when its process dies, even by kill -9.
"""
import signal
import subprocess
import sys
import threading
import time

import download
from conftest import REPO_DIR


def hold_lock_in_another_process(model_dir):
    """A process holding model_dir's download lock, as a downloading run does, until it is killed."""
    code = ("import sys, time, download\n"
            "with download.model_dir_lock(sys.argv[1]):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(model_dir)], cwd=REPO_DIR, stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"held\n"
    return holder


def seconds_to_take_lock(model_dir, give_up_after=10):
    """How long model_dir_lock took to get the lock (in a thread, so that a lock that never frees
    fails the test instead of hanging it), or None if it did not within give_up_after seconds."""
    taken = []

    def take():
        start = time.monotonic()
        with download.model_dir_lock(str(model_dir)):
            taken.append(time.monotonic() - start)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(give_up_after)
    return taken[0] if taken else None


def test_a_run_waits_for_the_lock_saying_so_and_gets_it_when_its_holder_is_killed(tmp_path, capsys):
    """While another process holds the lock, a run waits (and says so on stderr); when that process
    dies by kill -9, with no chance to clean up, the kernel drops its flock and the run goes on."""
    holder = hold_lock_in_another_process(tmp_path)
    threading.Timer(0.5, holder.send_signal, [signal.SIGKILL]).start()
    waited = seconds_to_take_lock(tmp_path)
    holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert waited is not None and 0.4 < waited < 5, f"waited {waited} s for a lock whose holder died after 0.5 s"
    assert f"waiting for another run that is downloading into {tmp_path}" in capsys.readouterr().err


def test_a_lock_left_by_a_killed_run_does_not_make_the_next_one_wait(tmp_path, capsys):
    holder = hold_lock_in_another_process(tmp_path)
    holder.kill()
    holder.wait()
    assert (tmp_path / download.LOCK_FILE).exists()  # the file stays; its flock went with the process
    waited = seconds_to_take_lock(tmp_path)
    assert waited is not None and waited < 1, f"waited {waited} s for a lock whose holder is dead"
    assert capsys.readouterr().err == ""


def test_a_complete_model_loads_without_importing_the_download_stack(copied_model_dir):
    """requests, urllib3, tqdm and filelock cost start-up time: only a missing file may import them."""
    code = ("import sys, utils\n"
            "utils.load_encoder_hparams_and_params('124M', sys.argv[1])\n"
            "print(' '.join(sorted({'requests', 'urllib3', 'tqdm', 'filelock'} & set(sys.modules))))\n")
    result = subprocess.run([sys.executable, "-c", code, str(copied_model_dir.parent)], cwd=REPO_DIR,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == ""
