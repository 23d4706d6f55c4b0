import pytest

import rbee_hive
from rbee_hive.app import main


def test_hive_version() -> None:
    assert rbee_hive.__version__ == "0.1.0"


def test_hive_main_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main()
    assert excinfo.value.code == 2
    assert "not implemented yet" in capsys.readouterr().err
