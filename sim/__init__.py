"""slimnfu.sim"""
