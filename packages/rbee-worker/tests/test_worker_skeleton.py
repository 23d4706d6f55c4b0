import pytest

import rbee_worker
from rbee_worker.app import main


def test_worker_version() -> None:
    assert rbee_worker.__version__ == "0.1.0"


def test_worker_main_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main()
    assert excinfo.value.code == 2
    assert "not implemented yet" in capsys.readouterr().err
