"""slimnfu.rtl"""
