"""Data in: files and arrays -> validated named columns, splits."""
