"""slimnfu.gen"""
