"""Writing generated sequences where people look at them: files and TensorBoard.

What a sample looks like depends on the data kind (see
:class:`tfhier.data.base.SequenceData`): handwriting becomes a PNG of pen
strokes, audio a WAV file, binary data (piano rolls, MNIST) an image; every
kind is also saved as ``.npz`` in model space.  A user's own data (``info['format']``, see
:mod:`tfhier.data.own` and :mod:`tfhier.data.midi`) are also written back in their own format and units:
one CSV (with the data's header and delimiter) or ``.npy`` per sample plus a PNG plotting each channel over
time, or one ``.mid`` per sample plus the piano-roll image.
"""

from __future__ import annotations


import numpy as np
import tensorflow as tf

from tfhier import plotting
from tfhier.fileio import atomic_write


def waveforms(x, info):
    """Audio frames [N, T, W] (normalised) -> waveforms [N, T*W] in the data's units."""
    from tfhier.data.audio import frames_to_waveform

    return np.stack([frames_to_waveform(frames, info) for frames in x])


def save_samples(x, kind, info, stem, prefix_steps: int = 0):
    """Saves samples ``x`` [N, T, D] as ``stem.npz`` plus the kind's own format; returns the main path.

    ``prefix_steps``: each row's first that many steps are a given prefix (primed sampling); handwriting
    draws them in another colour, binary data marks where the continuation begins, the npz records it.
    """
    x = np.asarray(x)
    atomic_write(stem + ".npz", lambda p: np.savez(p, samples=x, prefix_steps=np.int64(prefix_steps)))
    fmt = info.get("format")
    if fmt in ("csv", "npy", "npz") and kind != "binary":
        return save_in_data_format(x, info, stem, prefix_steps)
    if fmt in ("csv", "npy", "npz"):
        save_in_data_format(x, info, stem, prefix_steps)  # and the image of binary data below
    if fmt == "midi":
        from tfhier.data.midi import roll_to_midi

        for i, roll in enumerate(x):
            roll_to_midi(roll, f"{stem}_{i}.mid", int(info.get("steps_per_beat", 4)),
                         float(info.get("frame_rate", 0.0)))
    if kind == "handwriting":
        return str(plotting.save_handwriting_png(list(x), stem + ".png", float(info.get("offset_scale", 1.0)),
                                                 prefix_steps=prefix_steps))
    if kind == "audio":
        import soundfile as sf

        rate = int(info["sample_rate"])
        for i, wave in enumerate(waveforms(x, info)):
            peak = max(1.0, float(np.max(np.abs(wave))))
            atomic_write(f"{stem}_{i}.wav", lambda p, w=wave / peak: sf.write(p, w, rate, format="WAV"))
        return f"{stem}_0.wav"
    if kind == "binary":
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 1.5 * len(x)))
        for i, seq in enumerate(x):
            ax = fig.add_subplot(len(x), 1, i + 1)
            ax.imshow(seq.T, aspect="auto", origin="lower", cmap="gray_r", interpolation="nearest")
            if prefix_steps:
                ax.axvline(prefix_steps - 0.5, color=plotting.PREFIX_COLOR, linewidth=1.5)
        return atomic_write(stem + ".png", lambda p: fig.savefig(p, format="png"))
    return stem + ".npz"


def save_in_data_format(x, info, stem, prefix_steps: int = 0) -> str:
    """Samples ``x`` [N, T, D] (model units) in the data's units and file format: ``stem_<i>.csv`` (the data's
    header and delimiter) or ``stem_<i>.npy``, plus ``stem.png`` plotting each channel over time. Returns the
    PNG's path."""
    from tfhier.data.units import to_data_units

    y = to_data_units(x, info)
    names = info.get("channel_names")
    if info.get("format") == "csv":
        delimiter = info.get("csv_delimiter", ",")
        for i, seq in enumerate(y):
            lines = [delimiter.join(names)] if names else []
            lines += [delimiter.join(f"{v:.9g}" for v in row) for row in seq]
            atomic_write(f"{stem}_{i}.csv", "\n".join(lines) + "\n")
    else:
        for i, seq in enumerate(y):
            atomic_write(f"{stem}_{i}.npy", lambda p, a=np.asarray(seq, np.float32): np.save(p, a))
    fig = plotting.channels_figure(list(y), names, prefix_steps, titles=[f"sample {i}" for i in range(len(y))])
    return atomic_write(stem + ".png", lambda p: fig.savefig(p, format="png"))


def summarize_samples(x, kind, info, max_outputs=4):
    """Writes samples to the default TensorBoard writer (images for handwriting/binary, audio for audio)."""
    x = np.asarray(x)[:max_outputs]
    if kind == "handwriting":
        images = plotting.handwriting_image_batch(list(x), float(info.get("offset_scale", 1.0)))
        tf.summary.image("samples/handwriting", images, max_outputs=max_outputs)
    elif kind == "audio":
        waves = waveforms(x, info)
        waves = waves / np.maximum(1.0, np.max(np.abs(waves), axis=1, keepdims=True))
        tf.summary.audio("samples/audio", waves[..., None].astype(np.float32), int(info["sample_rate"]),
                         max_outputs=max_outputs)
    elif kind == "real" and info.get("format") in ("csv", "npy", "npz"):
        from tfhier.data.units import to_data_units

        fig = plotting.channels_figure(list(to_data_units(x, info)), info.get("channel_names"))
        tf.summary.image("samples/channels", plotting.figure_to_rgba(fig)[None], max_outputs=1)
    elif kind == "binary":
        tf.summary.image("samples/binary", np.transpose(x, (0, 2, 1))[..., ::-1, :, None].astype(np.float32),
                         max_outputs=max_outputs)
