"""Reports of runs: PNG figures (plots.py: α trajectories, per-selector score heatmaps, cell diagrams; needs the
optional matplotlib extra, `pip install 'archselect[plots]'`) and the HTML pages that embed them (html.py)."""
