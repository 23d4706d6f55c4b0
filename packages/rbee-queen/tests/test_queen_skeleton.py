import pytest

import rbee_queen
from rbee_queen.app import main


def test_queen_version() -> None:
    assert rbee_queen.__version__ == "0.1.0"


def test_queen_main_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main()
    assert excinfo.value.code == 2
    assert "not implemented yet" in capsys.readouterr().err
