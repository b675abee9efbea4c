"""slimnfu.compress"""
