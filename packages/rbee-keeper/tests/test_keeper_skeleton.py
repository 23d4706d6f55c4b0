import pytest

import rbee_keeper
from rbee_keeper.cli import main


def test_keeper_version() -> None:
    assert rbee_keeper.__version__ == "0.1.0"


def test_keeper_main_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main()
    assert excinfo.value.code == 2
    assert "not implemented yet" in capsys.readouterr().err
