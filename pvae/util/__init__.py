"""The ground floor: argument checks, progress bars, atomic files, small tensor facts. Imports
nothing else of pvae."""
