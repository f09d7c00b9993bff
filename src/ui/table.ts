// One way to make a table: cli-table3 with colour only when a person is looking.

import Table from 'cli-table3';

export function makeTable(head: string[], color: boolean): Table.Table {
  return new Table({ head, style: color ? {} : { head: [], border: [] } });
}
