"""training package"""
