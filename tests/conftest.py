"""Shared fixtures: the committed OpenAI-format test models and the repository on sys.path."""
import os
import shutil
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
sys.path.insert(0, REPO_DIR)
sys.path.insert(0, TESTS_DIR)

import download  # noqa: E402
import reference  # noqa: E402
import utils  # noqa: E402


def load_fixture(name):
    """(hparams, params) of a committed fixture model, read by this project's loader."""
    model_dir = reference.fixture_dir(name)
    hparams = utils.load_hparams(model_dir)
    return hparams, utils.load_params(model_dir, hparams)


@pytest.fixture(params=reference.FIXTURE_CONFIGS)
def fixture_name(request):
    return request.param


@pytest.fixture
def copied_model_dir(tmp_path):
    """A writable copy of the tiny-a fixture as <models_dir>/124M, for tests that damage files."""
    models_dir = tmp_path / "models"
    # without the remembered integrity check a load of the committed fixture may have left there
    shutil.copytree(reference.fixture_dir("tiny-a"), models_dir / "124M", ignore=shutil.ignore_patterns(".*"))
    return models_dir / "124M"


@pytest.fixture
def offline(monkeypatch):
    """Point downloads at a closed local port, so a test can never reach the internet."""
    monkeypatch.setenv(download.BASE_URL_ENV, "http://127.0.0.1:9/gpt-2/models")
