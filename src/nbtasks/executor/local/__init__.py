"""executor/local"""
