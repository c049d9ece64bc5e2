# frozen_string_literal: true

module TaskerWorker
  class Web
    # The task page's DAG, drawn on the server as SVG: a column per depth (the longest path from
    # a root), a box per step filled with its state's colour, a line from each parent.
    module Dag
      BOX_W = 170
      BOX_H = 36
      GAP_X = 60
      GAP_Y = 20

      module_function

      # nodes: [{ name:, parents: [names], state:, attempts:, max_attempts: }]; `escape` is Html#h.
      def svg(nodes, colours, &escape)
        depth = depths(nodes)
        columns = nodes.group_by { |n| depth[n[:name]] }
        position = {}
        columns.each do |d, column|
          column.each_with_index { |n, i| position[n[:name]] = [d * (BOX_W + GAP_X), i * (BOX_H + GAP_Y)] }
        end
        width = ((columns.keys.max || 0) + 1) * (BOX_W + GAP_X)
        height = [(columns.values.map(&:size).max || 1) * (BOX_H + GAP_Y), BOX_H + GAP_Y].max
        lines = nodes.flat_map { |n| edges(n, position) }
        boxes = nodes.map { |n| box(n, position[n[:name]], colours, &escape) }
        <<~SVG
          <svg xmlns="http://www.w3.org/2000/svg" class="dag" width="#{width}" height="#{height}" viewBox="-2 -2 #{width + 4} #{height + 4}">
          <defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto">
          <path d="M0,0 L10,5 L0,10 z" fill="#667"/></marker></defs>
          #{lines.join("\n")}
          #{boxes.join("\n")}
          </svg>
        SVG
      end

      def edges(node, position)
        to = position[node[:name]]
        node[:parents].filter_map do |parent|
          from = position[parent] or next
          %(<line x1="#{from[0] + BOX_W}" y1="#{from[1] + (BOX_H / 2)}" x2="#{to[0]}" y2="#{to[1] + (BOX_H / 2)}" \
stroke="#667" stroke-width="1.5" marker-end="url(#arrow)"/>)
        end
      end

      def box(node, (x, y), colours, &escape)
        label = "#{node[:name]} (#{node[:attempts]}/#{node[:max_attempts]})"
        %(<g class="step" data-state="#{escape.call(node[:state])}"><title>#{escape.call("#{node[:name]}: #{node[:state]}")}</title>\
<rect x="#{x}" y="#{y}" width="#{BOX_W}" height="#{BOX_H}" rx="5" fill="#{colours.fetch(node[:state].to_s, "#eee")}" \
stroke="#445"/><text x="#{x + 8}" y="#{y + 22}" font-size="12">#{escape.call(label)}</text></g>)
      end

      # Longest distance from a root, per step name (a cycle, which templates refuse, stops at 0).
      def depths(nodes)
        by_name = nodes.to_h { |n| [n[:name], n] }
        memo = {}
        visit = lambda do |name, seen|
          return memo[name] if memo.key?(name)
          return 0 if seen.include?(name) || !by_name.key?(name)

          parents = by_name[name][:parents]
          memo[name] = parents.empty? ? 0 : parents.map { |p| visit.call(p, seen + [name]) + 1 }.max
        end
        nodes.each { |n| visit.call(n[:name], []) }
        memo
      end
    end
  end
end
