"""Runs on disk: the workspace (`workspace`), run folders and their files (`store`), and run summaries
for `tl runs` / `tl info` (`info`). Imports runtime, data, backbones."""
