"""TODO room docstring"""
