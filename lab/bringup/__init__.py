"""The bring-up: the launchers that start the lab's daemons (see README.md, its map)."""
