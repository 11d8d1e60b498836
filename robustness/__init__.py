"""robustness package"""
