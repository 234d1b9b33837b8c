"""NumPy oracle of every op: plain, obviously right, and the truth every backend is
tested against.  Speed is not a goal here; clarity is."""
