"""Inference backends behind one small protocol (see base.Engine)."""
