package counter

// PartitionStates returns a copy of the states of partition p's counters
// on this member. Call it as the partition's executor (RunOnPartition).
func (s *Service) PartitionStates(p int) map[string]State { return s.containers[p].states() }
