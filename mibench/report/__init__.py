"""Leaderboard tables and the HTML report: pure functions of the result files."""
