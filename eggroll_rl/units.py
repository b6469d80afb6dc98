"""Sizes and durations as people read them: 1.2 MB, 0:03:07 (the model card, the export command)."""


def human_bytes(n: float) -> str:
    """Decimal units with one decimal: 512 B, 1.2 KB, 3.4 GB, ... TB."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s: float) -> str:
    """h:mm:ss, rounded to the second."""
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
