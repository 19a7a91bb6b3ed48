"""The "cluttered digits" demo: does learning where to look beat a fixed grid at the same budget?"""
