"""Frame-level features: each row is what the module says it is, computed inside one patch."""
import numpy as np

from humwatch.agent.contract import N_MELS, PATCH_FRAMES
from humwatch.agent.signal.frames import FRAME_SOURCES, frame_dim, frame_rows, patch_means


def patches(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(-40, 10, (n, N_MELS, PATCH_FRAMES)).astype(np.float32)


def test_dynamics_are_each_frames_first_and_second_difference():
    db = patches()
    rows = frame_rows("logmel-dynamics", db).reshape(len(db), PATCH_FRAMES - 2, 2 * N_MELS)
    for p in range(len(db)):
        for t in range(2, PATCH_FRAMES):
            frame, before, before2 = db[p, :, t], db[p, :, t - 1], db[p, :, t - 2]
            np.testing.assert_allclose(rows[p, t - 2], np.r_[frame - before, frame - 2 * before + before2],
                                       rtol=1e-5, atol=1e-4)


def test_frames_are_the_patch_columns_in_time_order():
    db = patches()
    rows = frame_rows("logmel-frames", db)
    assert rows.shape == (len(db) * PATCH_FRAMES, N_MELS)
    np.testing.assert_array_equal(rows[PATCH_FRAMES + 5], db[1, :, 5])


def test_a_patch_rows_do_not_depend_on_other_patches():
    db = patches()
    for source in FRAME_SOURCES:
        alone = frame_rows(source, db[1:2])
        together = frame_rows(source, db).reshape(len(db), -1, frame_dim(source))[1]
        np.testing.assert_array_equal(alone, together)


def test_a_patch_scores_the_mean_of_its_rows():
    scores = np.arange(12.0)
    np.testing.assert_array_equal(patch_means(scores, 3), [1.5, 5.5, 9.5])
