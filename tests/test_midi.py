"""--dataset=midi: MIDI files made with pretty_midi read into 88-key piano rolls (checked against the notes
written), the roll -> MIDI -> roll round trip, drums and out-of-range notes, corrupt files, samples as .mid."""

import numpy as np
import pretty_midi
import pytest

from tfhier.data import DataError, load_dataset
from tfhier.data.midi import LOWEST_NOTE, midi_to_roll, roll_to_midi


def song(path, notes, bpm=120.0, drums=(), extra_instrument=()):
    """Writes a MIDI file of ``notes`` [(pitch, start beat, end beat)] at ``bpm``."""
    beat = 60.0 / bpm
    pm = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    piano = pretty_midi.Instrument(program=0)
    for pitch, start, end in notes:
        piano.notes.append(pretty_midi.Note(velocity=90, pitch=pitch, start=start * beat, end=end * beat))
    pm.instruments.append(piano)
    if drums:
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        kit.notes += [pretty_midi.Note(velocity=90, pitch=p, start=s * beat, end=e * beat) for p, s, e in drums]
        pm.instruments.append(kit)
    if extra_instrument:
        strings = pretty_midi.Instrument(program=48)
        strings.notes += [pretty_midi.Note(90, p, s * beat, e * beat) for p, s, e in extra_instrument]
        pm.instruments.append(strings)
    pm.write(str(path))


def expected_roll(notes, steps_per_beat, length):
    roll = np.zeros([length, 88], np.float32)
    for pitch, start, end in notes:
        if 21 <= pitch <= 108:
            roll[int(round(start * steps_per_beat)):int(round(end * steps_per_beat)), pitch - LOWEST_NOTE] = 1
    return roll


NOTES = [(60, 0, 1), (64, 0, 2), (67, 1, 1.5), (72, 2.25, 4), (21, 3, 3.5), (108, 0.5, 0.75)]


@pytest.mark.parametrize("bpm, steps_per_beat", [(120.0, 4), (90.0, 2), (133.0, 8)])
def test_piano_roll_of_a_file_matches_its_notes(tmp_path, bpm, steps_per_beat):
    song(tmp_path / "a.mid", NOTES, bpm, drums=[(36, 0, 4)], extra_instrument=[(10, 0, 1), (50, 1, 2)])
    roll, dropped = midi_to_roll(tmp_path / "a.mid", steps_per_beat)
    notes = NOTES + [(50, 1, 2)]  # the second instrument is merged; its note 10 is below the piano
    assert dropped == 1
    assert roll.shape == (4 * steps_per_beat, 88)
    np.testing.assert_array_equal(roll, expected_roll(notes, steps_per_beat, 4 * steps_per_beat))


def test_fixed_frame_rate(tmp_path):
    song(tmp_path / "a.mid", [(60, 0, 1), (62, 1, 2)], bpm=60.0)  # one beat = one second
    roll, _ = midi_to_roll(tmp_path / "a.mid", frame_rate=10.0)
    assert roll.shape == (20, 88)
    assert roll[:10, 60 - 21].all() and not roll[10:, 60 - 21].any() and roll[10:, 62 - 21].all()


def test_roll_to_midi_to_roll_is_the_same_roll(tmp_path):
    rng = np.random.default_rng(0)
    roll = (rng.random([64, 88]) < 0.08).astype(np.float32)
    roll[0, 0] = roll[-1, 87] = 1.0  # the piano's extremes, and a note in the last step
    for steps_per_beat in (4, 3):
        roll_to_midi(roll, tmp_path / "r.mid", steps_per_beat=steps_per_beat)
        back, dropped = midi_to_roll(tmp_path / "r.mid", steps_per_beat)
        assert dropped == 0
        np.testing.assert_array_equal(back, roll)
    roll_to_midi(roll, tmp_path / "f.mid", frame_rate=20.0)
    np.testing.assert_array_equal(midi_to_roll(tmp_path / "f.mid", frame_rate=20.0)[0], roll)


def test_folder_of_midi_files_loads_as_binary_88_key_data(tmp_path):
    for i in range(5):
        song(tmp_path / f"song{i}.mid", [(60 + i, 0, 1), (64, 1, 3)])
    data = load_dataset("midi", str(tmp_path))
    assert data.kind == "binary" and data.feature_dim == 88 and data.info["format"] == "midi"
    assert sum(len(data.split(s)) for s in ("train", "valid", "test")) == 5
    assert all(s.shape == (12, 88) for s in data.train)


def test_corrupt_and_empty_midi_files_are_refused_by_name(tmp_path):
    for i in range(3):
        song(tmp_path / f"ok{i}.mid", [(60, 0, 1)])
    (tmp_path / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06 this is not midi")
    with pytest.raises(DataError, match=r"broken\.mid: not a readable MIDI file"):
        load_dataset("midi", str(tmp_path))
    (tmp_path / "broken.mid").write_text("a text file with a .mid name")
    with pytest.raises(DataError, match=r"broken\.mid: not a readable MIDI file"):
        load_dataset("midi", str(tmp_path))
    song(tmp_path / "broken.mid", [], drums=[(36, 0, 1)])
    with pytest.raises(DataError, match=r"broken\.mid: no pitched note in the piano range"):
        load_dataset("midi", str(tmp_path))


def test_samples_are_written_as_playable_midi(tmp_path):
    from tfhier import samples

    for i in range(3):
        song(tmp_path / f"s{i}.mid", [(60, 0, 1)])
    data = load_dataset("midi", str(tmp_path))
    x = np.zeros([2, 16, 88], np.float32)
    x[0, 2:6, 39] = 1
    x[1, :, 50] = 1
    samples.save_samples(x, data.kind, data.info, str(tmp_path / "out" / "sample"))
    for i in range(2):
        pm = pretty_midi.PrettyMIDI(str(tmp_path / "out" / f"sample_{i}.mid"))
        assert len(pm.instruments[0].notes) == 1 and pm.instruments[0].program == 0
    back, _ = midi_to_roll(tmp_path / "out" / "sample_0.mid")
    np.testing.assert_array_equal(back, x[0, :6])  # trailing silence is not part of a MIDI file
    assert (tmp_path / "out" / "sample.png").exists()
