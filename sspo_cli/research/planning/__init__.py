"""What a workflow will run, before anything trains: recipe files and their sections, grids and search
spaces, recipes at a point, the planned run and its tags, the plan of a search."""
