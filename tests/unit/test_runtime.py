"""The filter around interpreter creation: LiteRT's delegate banner goes, everything else written to fd 2 stays."""
import os

from humwatch.agent.model.runtime import DELEGATE_BANNER, without_delegate_banner


def test_only_the_delegate_banner_is_dropped_from_fd_2(capfd):
    with without_delegate_banner():
        os.write(2, DELEGATE_BANNER + b"\n")
        os.write(2, b"ERROR: the runtime's own complaint\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU. (and more)\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == ("ERROR: the runtime's own complaint\n"
                                      "INFO: Created TensorFlow Lite XNNPACK delegate for CPU. (and more)\nafter\n")


def test_fd_2_is_restored_when_the_block_raises(capfd):
    try:
        with without_delegate_banner():
            os.write(2, b"kept\n")
            raise ValueError("a bad model")
    except ValueError:
        pass
    os.write(2, b"restored\n")
    assert capfd.readouterr().err == "kept\nrestored\n"
